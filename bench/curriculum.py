"""Curriculum step benchmark (`pal bench curriculum`): examples/s and peak memory of one training step.

PLITS vs LAL vs PAL on the embedded SmolLM2-135M with the demo encoder (a tiny SSLAM: 513 tokens per 10 s clip),
with the encoder run on the fly and with the feature cache, side by side, each variant in its own process. A step is
what the curriculum runs per micro-batch: collation (audio decoding and encoding, or the cache lookup; the chat
template), forward, backward and an AdamW update of the stage-1 trainables (the connector), bf16 autocast where the
CPU supports it.
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

CONNECTORS = {
    "plits": dict(connector="plits"),
    "lal": dict(connector="lal", lal_start_layer=4),
    "pal": dict(connector="pal", n_summary=8, lal_start_layer=4, qformer_layers=1),
}
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


def measure(connector: str, cached: bool, batch: int, repeats: int) -> dict:
    from curriculum.data import Collator
    from curriculum.manifest import validate_manifest
    from encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from encoders.feature_cache import FeatureCache
    from bench.efficiency import _peak_rss_mb, _rss_mb, use_bf16
    from pal import PALForConditionalGeneration, PALProcessor, set_trainable
    from pal.llm import load_tokenizer

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
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        collate = Collator(PALProcessor(load_tokenizer(None), model.config, padding_side="right"), ensemble, cache)
        examples = validate_manifest(manifest)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16("auto"))

        def step():
            inputs, _ = collate(examples)
            with autocast:
                loss = model(**inputs, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        before = _rss_mb()
        start = time.perf_counter()
        step()
        times = [time.perf_counter() - start]
        peak = _peak_rss_mb() - before
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        best = min(times[1:]) if repeats else times[0]
        return {"connector": connector, "feature_cache": cached, "batch": batch, "step_s": best,
                "examples_per_s": batch / best, "peak_mem_mb": peak}


def run(batch: int = 4, repeats: int = 2, progress=print) -> dict:
    results = []
    for connector in CONNECTORS:
        for cached in (False, True):
            progress(f"  measuring {connector:5s} {'with' if cached else 'without'} the feature cache ...")
            cmd = [sys.executable, "-m", "bench.curriculum", "--worker", connector, str(int(cached)), str(batch),
                   str(repeats)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if done.returncode != 0:
                raise RuntimeError(f"curriculum benchmark worker failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    by = {(r["connector"], r["feature_cache"]): r for r in results}
    ratios = {}
    for connector in CONNECTORS:
        ratios[f"{connector}: cache speed-up"] = by[connector, False]["step_s"] / by[connector, True]["step_s"]
    for connector in ("lal", "pal"):
        ratios[f"{connector}/plits throughput (cached)"] = by["plits", True]["step_s"] / by[connector, True]["step_s"]
        ratios[f"{connector}/plits peak memory (cached)"] = by[connector, True]["peak_mem_mb"] / by["plits", True]["peak_mem_mb"]
    return {"results": results, "ratios": ratios}


def main(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = run(args.batch, args.repeats, progress=log)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'connector':9s} {'cache':5s} {'step s':>7s} {'examples/s':>10s} {'peak MB':>8s}")
    for r in report["results"]:
        print(f"{r['connector']:9s} {'yes' if r['feature_cache'] else 'no':5s} {r['step_s']:7.3f} "
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
        print(json.dumps(measure(sys.argv[2], bool(int(sys.argv[3])), int(sys.argv[4]), int(sys.argv[5]))))
    else:
        import argparse

        p = argparse.ArgumentParser()
        add_arguments(p)
        sys.exit(main(p.parse_args()))
