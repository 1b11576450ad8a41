"""Several questions about one clip (`pal bench inference`): questions/s for 1 and for 8 questions per clip.

Side by side in one run, on the embedded SmolLM2-135M with LAL from layer 4 and an SSLAM encoder (ViT-B sized,
random weights: what encoding costs, not what it knows), greedy decoding of a fixed number of tokens:
- one by one: each question a separate `ask` (the clip encoded, and its LAL keys/values computed, every time);
- batched: the 8 questions in one batch, the clip repeated (encoded 8 times, LAL keys/values 8 times);
- shared: `ask_many` (the clip encoded once, its LAL keys/values computed once for the batch).
The minimum over repeats of each is reported, and the ratios against one-by-one.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PRESETS = {"full": {"sslam": "vitb", "llm": None, "tokens": 16}, "tiny": {"sslam": "tiny", "llm": None, "tokens": 4}}


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(preset: str = "full", questions: int = 8, repeats: int = 2, progress=print) -> dict:
    import soundfile

    from encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal import PALForConditionalGeneration
    from pal.llm import load_tokenizer

    from eval.inference import AudioLLM, Decoding

    setting = PRESETS[preset]
    torch.manual_seed(0)
    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict(
        {"encoders": {"sslam": {"type": "sslam", "preset": setting["sslam"]}}}))
    model = PALForConditionalGeneration.from_llm(setting["llm"], encoder_dims=ensemble.dims, connector="lal",
                                                 lal_start_layer=4)
    llm = AudioLLM(model, load_tokenizer(setting["llm"]), ensemble)
    decoding = Decoding(max_new_tokens=setting["tokens"])
    model.generation_config.min_new_tokens = decoding.max_new_tokens  # every variant generates as many tokens
    asked = [f"Question {i}: what do you hear?" for i in range(questions)]
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.wav"
        t = np.arange(160000) / 16000
        soundfile.write(clip, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
        progress("  one question ...")
        single = _best(lambda: llm.ask(clip, asked[0], decoding), repeats)
        progress(f"  {questions} questions one by one ...")
        one_by_one = _best(lambda: [llm.ask(clip, q, decoding) for q in asked], repeats)
        progress(f"  {questions} questions batched, clip repeated ...")
        batched = _best(lambda: llm.ask_batch([clip] * questions, asked, decoding), repeats)
        progress(f"  {questions} questions sharing one encoding ...")
        shared = _best(lambda: llm.ask_many(clip, asked, decoding), repeats)
        same = llm.ask_many(clip, asked, decoding) == llm.ask_batch([clip] * questions, asked, decoding)
    rates = {"1 question": 1 / single, f"{questions} one by one": questions / one_by_one,
             f"{questions} batched": questions / batched, f"{questions} shared encoding": questions / shared}
    return {"preset": preset, "questions": questions, "new_tokens": decoding.max_new_tokens,
            "questions_per_s": rates, "shared_equals_batched": same,
            "ratios": {"shared / one by one": one_by_one / shared, "shared / batched": batched / shared,
                       "batched / one by one": one_by_one / batched}}


def main(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = run(args.preset, args.questions, args.repeats, progress=log)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, rate in report["questions_per_s"].items():
        print(f"{name:24s} {rate:7.2f} questions/s")
    for name, value in report["ratios"].items():
        print(f"{name}: {value:.2f}x")
    print(f"shared answers equal batched answers: {report['shared_equals_batched']}")
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
