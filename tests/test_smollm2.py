"""The real embedded LLM (SmolLM2-135M-Instruct) answers a simple question through the PAL wrapper, with no audio."""

from __future__ import annotations

import pytest
import torch

from pal import PALForConditionalGeneration, PALProcessor
from pal.llm import load_tokenizer


@pytest.fixture(scope="module")
def smollm2():
    model = PALForConditionalGeneration.from_llm(
        None, encoder_dims={"sslam": 768, "whisper": 384}, connector="pal",
        routes={"sslam": "lal", "whisper": "plits"}, lal_start_layer=4,
    ).eval()
    return model, load_tokenizer(None)


@pytest.mark.slow
def test_smollm2_answers_through_the_pal_wrapper(smollm2):
    model, tokenizer = smollm2
    processor = PALProcessor(tokenizer, model.config)
    batch = processor(["What is the capital of France?", "What is 2 + 3? Answer with the number."])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=processor.pad_id)
    answers = processor.decode(out, batch["input_ids"].shape[1])
    assert "Paris" in answers[0], answers
    assert "5" in answers[1], answers


@pytest.mark.slow
def test_smollm2_logits_without_audio_equal_the_bare_llm(smollm2):
    from pal.llm import load_llm

    model, tokenizer = smollm2
    bare = load_llm(None).eval()
    ids = tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, bare(input_ids=ids).logits)
