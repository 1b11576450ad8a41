"""Curriculum step benchmark (`pal bench curriculum`): examples/s and peak memory of one training step.

PLITS vs LAL vs PAL on the embedded SmolLM2-135M with the demo encoder (a tiny SSLAM: 513 tokens per 10 s clip),
with the encoder run on the fly and with the feature cache, side by side, each variant in its own process. A step is
what the curriculum runs per micro-batch: collation (audio decoding and encoding, or the cache lookup; the chat
template), forward, backward and an AdamW update of the stage-1 trainables (the connector), bf16 autocast where the
CPU supports it.

Data path: "inline" collates inside the step (how the curriculum ran before its DataLoader); "workers" is the
curriculum's own path, 2 DataLoader workers reading audio and templating ahead while the step trains, the frozen
encoder in the training process. Memory: LAL with and without gradient checkpointing (the stage option). Peak memory
is the first step's high-water mark of live tensors (the optimizer state is created in it), from PyTorch's profiler
(`bench.memory.tensor_peak_mb`); the step times are those of the later steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pal.presets import connector_preset

CONNECTORS = {"plits": connector_preset("plits"), "lal": connector_preset("lal", lal_config={"start_layer": 4}),
              "pal": connector_preset("pal", lal_config={"start_layer": 4}, plits_config={"n_summary": 8})}
ENCODERS = {"encoders": {"sslam": {"type": "sslam", "preset": "tiny"}}}


def _corpus(root: Path, count: int) -> Path:
    import soundfile

    rows = []
    for i in range(count):
        t = np.arange(160000) / 16000
        soundfile.write(root / f"{i}.wav", (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
        rows.append({"id": str(i), "audio": f"{i}.wav", "messages": [
            {"role": "user", "content": "<audio>\nDescribe the sound in one sentence."},
            {"role": "assistant", "content": f"A steady tone at {200 + 50 * i} hertz."}]})
    (root / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root / "bench.jsonl"


def measure(connector: str, cached: bool, batch: int, repeats: int, workers: int = 0,
            checkpointing: bool = False) -> dict:
    from pal import PALForConditionalGeneration, PALProcessor, set_trainable
    from pal.curriculum.stage_data import StageData, stage_loader
    from pal.data.manifest import examples_dataset, validate_manifest
    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal.encoders.feature_cache import FeatureCache
    from pal.llm import load_tokenizer

    from .efficiency import use_bf16
    from .memory import tensor_peak_mb

    with tempfile.TemporaryDirectory() as tmp:
        manifest = _corpus(Path(tmp), batch)
        ensemble_config = EnsembleConfig.from_dict(ENCODERS)
        ensemble = AudioEncoderEnsemble(ensemble_config)
        cache = None
        if cached:
            cache = FeatureCache(Path(tmp) / "cache", ensemble_config)
            cache.build([Path(tmp) / f"{i}.wav" for i in range(batch)], ensemble=ensemble, progress=False)
        torch.manual_seed(0)
        model = PALForConditionalGeneration.from_llm(None, encoder_dims=ensemble.dims, **CONNECTORS[connector]).train()
        set_trainable(model, ["connector"])
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        processor = PALProcessor(load_tokenizer(None), model.config, padding_side="right", ensemble=ensemble,
                                 cache=cache)
        examples = validate_manifest(manifest)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16("auto"))

        data = StageData([(examples_dataset(examples), 1.0, str(manifest))], 0, 0, batch)
        batches = iter(stage_loader(data, processor, 0, repeats + 1, 0, batch, workers)) if workers else None

        def step():
            inputs, _ = processor.collate(next(batches) if workers else processor.prepare(examples))
            with autocast:
                loss = model(**inputs, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        start = time.perf_counter()
        peak = tensor_peak_mb(step)  # the first step's high-water mark (optimizer state included), profiled
        times = [time.perf_counter() - start]
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        best = min(times[1:]) if repeats else times[0]
        return {"connector": connector, "feature_cache": cached, "workers": workers, "checkpointing": checkpointing,
                "batch": batch, "step_s": best, "examples_per_s": batch / best, "peak_mem_mb": peak}


# (connector, feature cache, DataLoader workers, gradient checkpointing)
VARIANTS = [(c, cached, 0, False) for c in CONNECTORS for cached in (False, True)] + [
    (c, False, 2, False) for c in CONNECTORS] + [("lal", True, 0, True)]


def run(batch: int = 4, repeats: int = 2, progress=print) -> dict:
    results = []
    for connector, cached, workers, checkpointing in VARIANTS:
        progress(f"  measuring {connector:5s} {'cache' if cached else f'{workers} workers' if workers else 'inline'}"
                 + (", gradient checkpointing" if checkpointing else "") + " ...")
        cmd = [sys.executable, "-m", "pal.bench.curriculum", "--worker", connector, str(int(cached)), str(batch),
               str(repeats), str(workers), str(int(checkpointing))]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
        if done.returncode != 0:
            raise RuntimeError(f"curriculum benchmark worker failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    by = {(r["connector"], r["feature_cache"], r["workers"], r["checkpointing"]): r for r in results}
    ratios = {}
    for connector in CONNECTORS:
        inline, cached = by[connector, False, 0, False], by[connector, True, 0, False]
        ratios[f"{connector}: cache speed-up"] = inline["step_s"] / cached["step_s"]
        ratios[f"{connector}: DataLoader workers speed-up"] = inline["step_s"] / by[connector, False, 2, False]["step_s"]
    ratios["lal: gradient checkpointing peak memory"] = (by["lal", True, 0, True]["peak_mem_mb"]
                                                         / by["lal", True, 0, False]["peak_mem_mb"])
    for connector in ("lal", "pal"):
        ours, plits = by[connector, True, 0, False], by["plits", True, 0, False]
        ratios[f"{connector}/plits throughput (cached)"] = plits["step_s"] / ours["step_s"]
        ratios[f"{connector}/plits peak memory (cached)"] = ours["peak_mem_mb"] / plits["peak_mem_mb"]
    return {"results": results, "ratios": ratios}


def main(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = run(args.batch, args.repeats, progress=log)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'connector':9s} {'data':9s} {'ckpt':4s} {'step s':>7s} {'examples/s':>10s} {'peak MB':>8s}")
    for r in report["results"]:
        data = "cache" if r["feature_cache"] else f"{r['workers']} workers" if r["workers"] else "inline"
        print(f"{r['connector']:9s} {data:9s} {'yes' if r['checkpointing'] else 'no':4s} {r['step_s']:7.3f} "
              f"{r['examples_per_s']:10.2f} {r['peak_mem_mb']:8.0f}")
    for name, value in report["ratios"].items():
        print(f"{name}: {value:.2f}x")
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        print(json.dumps(measure(sys.argv[2], bool(int(sys.argv[3])), int(sys.argv[4]), int(sys.argv[5]),
                                 int(sys.argv[6]), bool(int(sys.argv[7])))))
    else:
        import argparse

        p = argparse.ArgumentParser()
        add_arguments(p)
        sys.exit(main(p.parse_args()))
