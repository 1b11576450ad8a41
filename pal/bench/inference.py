"""Inference throughput (`pal bench inference`): PLITS vs LAL vs PAL vs cross-attention, side by side in one run.

On the embedded SmolLM2-135M with a ViT-B-sized SSLAM (random weights: what encoding and decoding cost, not what
they know), 10 s clips, greedy decoding of exactly `new_tokens` tokens, end to end (reading the audio, encoding,
prefill, decoding), for each connector:
- batched: `batch` different clips with a question each, one `ask_batch` call → examples/s;
- one by one: `questions` questions about one clip, each its own `ask` (the clip encoded, and its audio keys/values
  computed, every time) → questions/s;
- shared: the same questions in one `ask_many` call (the clip encoded once, the prompt prefix the questions share run
  once, LAL's and the cross-attention blocks' audio keys/values computed once for the batch) → questions/s, with its
  ratio to one by one.
The minimum over repeats of each is reported (the estimate least disturbed by other load).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pal.presets import connector_preset

PRESETS = {"full": {"sslam": "vitb", "llm": None, "new_tokens": 32, "seconds": 10.0},
           "tiny": {"sslam": "tiny", "llm": None, "new_tokens": 4, "seconds": 2.0}}
CONNECTORS = {"plits": connector_preset("plits"), "lal": connector_preset("lal", lal_config={"start_layer": 4}),
              "pal": connector_preset("pal", lal_config={"start_layer": 4}, plits_config={"n_summary": 32}),
              "xattn": connector_preset("xattn")}


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """`count` different tones (so batched rows are different clips)."""
    import soundfile

    t = np.arange(int(seconds * 16000)) / 16000
    paths = []
    for i in range(count):
        path = folder / f"clip{i}.wav"
        soundfile.write(path, (0.2 * np.sin(2 * np.pi * (220 + 110 * i) * t)).astype(np.float32), 16000)
        paths.append(path)
    return paths


def measure(connector: str, clips: list[Path], questions: int, repeats: int, setting: dict, ensemble,
            tokenizer) -> dict:
    from pal import PALForConditionalGeneration, PALProcessor
    from pal.inference.audio_llm import AudioLLM, Decoding

    torch.manual_seed(0)
    model = PALForConditionalGeneration.from_llm(setting["llm"], encoder_dims=ensemble.dims, **CONNECTORS[connector])
    llm = AudioLLM(model, PALProcessor(tokenizer, model.config, ensemble=ensemble))
    decoding = Decoding(max_new_tokens=setting["new_tokens"])
    model.generation_config.min_new_tokens = decoding.max_new_tokens  # every variant generates as many tokens
    asked = [f"Question {i}: what do you hear?" for i in range(questions)]
    batched = _best(lambda: llm.ask_batch(clips, asked[:1] * len(clips), decoding), repeats)
    one_by_one = _best(lambda: [llm.ask(clips[0], q, decoding) for q in asked], repeats)
    shared = _best(lambda: llm.ask_many(clips[0], asked, decoding), repeats)
    same = llm.ask_many(clips[0], asked, decoding) == llm.ask_batch([clips[0]] * questions, asked, decoding)
    return {"connector": connector, "batched_examples_per_s": len(clips) / batched,
            "one_by_one_questions_per_s": questions / one_by_one, "shared_questions_per_s": questions / shared,
            "shared_over_one_by_one": one_by_one / shared, "shared_equals_batched": same}


def run(preset: str = "full", questions: int = 8, batch: int = 8, repeats: int = 1, connectors=tuple(CONNECTORS),
        progress=print) -> dict:
    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal.llm import load_tokenizer

    setting = PRESETS[preset]
    torch.manual_seed(0)
    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict(
        {"encoders": {"sslam": {"type": "sslam", "preset": setting["sslam"]}}}))
    tokenizer = load_tokenizer(setting["llm"])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = _clips(Path(tmp), batch, setting["seconds"])
        for connector in connectors:
            progress(f"  {connector} ...")
            results.append(measure(connector, clips, questions, repeats, setting, ensemble, tokenizer))
    by = {r["connector"]: r for r in results}
    ratios = {f"{c}/plits": {"batched": r["batched_examples_per_s"] / by["plits"]["batched_examples_per_s"],
                             "shared": r["shared_questions_per_s"] / by["plits"]["shared_questions_per_s"]}
              for c, r in by.items() if c != "plits" and "plits" in by}
    return {"preset": preset, "questions": questions, "batch": batch, "new_tokens": setting["new_tokens"],
            "results": results, "ratios": ratios}


def main(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = run(args.preset, args.questions, args.batch, args.repeats, args.connectors, progress=log)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'connector':9s} {'batched ex/s':>12s} {'1-by-1 q/s':>11s} {'shared q/s':>11s} {'shared/1-by-1':>13s}")
    for r in report["results"]:
        print(f"{r['connector']:9s} {r['batched_examples_per_s']:12.2f} {r['one_by_one_questions_per_s']:11.2f} "
              f"{r['shared_questions_per_s']:11.2f} {r['shared_over_one_by_one']:12.2f}x")
    for name, r in report["ratios"].items():
        print(f"{name}: batched {r['batched']:.2f}x, shared {r['shared']:.2f}x")
    print("shared answers equal batched answers: "
          + ", ".join(f"{r['connector']} {r['shared_equals_batched']}" for r in report["results"]))
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--questions", type=int, default=8, help="questions about one clip")
    parser.add_argument("--batch", type=int, default=8, help="different clips in the batched measurement")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--connectors", nargs="+", choices=list(CONNECTORS), default=list(CONNECTORS))
