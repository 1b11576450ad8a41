"""`pal demo`: what the main job can do so far, end to end on the embedded default LLM.

1. The embedded SmolLM2-135M-Instruct, wrapped by a PAL model (SSLAM-sized encoder through LAL from layer 4, a
   Whisper-sized encoder through PLITS), answers text questions with no audio: the wrapper leaves the LLM intact.
2. The same model answers with (random, untrained) audio features attached, showing the audio path runs end to end.
3. The efficiency comparison of PLITS, LAL and PAL (`pal bench efficiency`), at the "quick" preset for `smoke`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

QUESTIONS = ["What is the capital of France?", "Name three animals that live in the sea."]


def run_demo(args) -> int:
    from eval import efficiency

    from . import PALForConditionalGeneration, PALProcessor
    from .llm import load_tokenizer

    out = Path(args.out)
    print("== 1. The embedded LLM inside a PAL wrapper (LAL for SSLAM from layer 4, PLITS for Whisper) ==")
    model = PALForConditionalGeneration.from_llm(
        args.llm, encoder_dims={"sslam": 768, "whisper": 384}, connector="pal",
        routes={"sslam": "lal", "whisper": "plits"}, lal_start_layer=4,
    ).eval()
    processor = PALProcessor(load_tokenizer(args.llm), model.config)
    batch = processor(QUESTIONS)
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=40, do_sample=False, pad_token_id=processor.pad_id)
    for question, answer in zip(QUESTIONS, processor.decode(generated, batch["input_ids"].shape[1])):
        print(f"Q: {question}\nA: {answer.strip()}\n")

    print("== 2. The audio path end to end (random encoder features, untrained connectors) ==")
    torch.manual_seed(0)
    audio = {
        "sslam": (torch.randn(1, 513, 768), torch.ones(1, 513, dtype=torch.bool)),  # CLS + 512 patches, 10 s
        "whisper": (torch.randn(1, 500, 384), torch.ones(1, 500, dtype=torch.bool)),  # 10 s of Whisper frames
    }
    batch = processor(["<audio>\nWhat can you hear?"], audio)
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=20, do_sample=False, pad_token_id=processor.pad_id)
    n_plits = int(batch["audio_token_mask"].sum())
    print(f"prompt: {batch['input_ids'].shape[1]} positions, {n_plits} of them Whisper tokens via PLITS; "
          f"513 SSLAM tokens as keys/values in layers {model.config.lal_layer_indices()[0]}.."
          f"{model.config.lal_layer_indices()[-1]}")
    print(f"untrained answer: {processor.decode(generated, batch['input_ids'].shape[1])[0].strip()!r}\n")

    print("== 3. Efficiency: PLITS vs LAL vs PAL ==")
    bench_args = argparse.Namespace(
        json=False, preset="quick" if args.preset == "smoke" else "full", audio_tokens=None, repeats=None,
        precision="auto", out=out,
    )
    return efficiency.main(bench_args)
