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
        routes={"sslam": "lal", "whisper": "plits"}, lal_config={"start_layer": 4},
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


@pytest.mark.slow
def test_first_updates_of_a_fresh_connector_improve_the_loss():
    """Stage 1 on SmolLM2 (connector only, lr warming to 1e-3 over 2 steps) went from loss 3 to 15 after one update:
    513 random-init LAL keys took 60-99 % of every audio layer's attention, and the PLITS summary tokens were 3.5x
    the scale of the text embeddings. Now the fresh connector leaves the LLM near its text-only loss, the first
    update lowers the loss, and no later step comes back above the start."""
    import numpy as np

    from pal import set_trainable
    from pal.encoders.ensemble import AudioEncoderEnsemble, EnsembleConfig
    from pal.training.engine import cosine_lr

    torch.manual_seed(0)
    ensemble = AudioEncoderEnsemble(EnsembleConfig.from_dict({"encoders": {"sslam": {"type": "sslam",
                                                                                     "preset": "tiny"}}}))
    t = np.arange(32000) / 16000
    words = {220: "low", 440: "middle", 880: "high", 1760: "very high"}
    audio = ensemble([torch.from_numpy((0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)) for f in words])
    answers = [f"A {w} pitched tone." for w in words.values()]
    model = PALForConditionalGeneration.from_llm(None, encoder_dims=ensemble.dims, connector="pal",
                                                 lal_config={"start_layer": 4},
                                                 plits_config={"n_summary": 8, "qformer_layers": 1, "qformer_heads": 4})
    set_trainable(model, ["connector"])
    model.train()
    processor = PALProcessor(load_tokenizer(None), model.config, padding_side="right")
    batch = processor(["<audio>\nDescribe the sound."] * 4, audio, answers=answers)
    with torch.no_grad():
        text_only = model(**processor(["Describe the sound."] * 4, answers=answers), use_cache=False).loss.item()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(6):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, 1e-3, 2, 60)  # 0, 5e-4, then 1e-3
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[0] < text_only + 3.5, (text_only, losses)  # before: 16.4 against a text-only 5.3
    start = losses[1]  # step 0 ran at lr 0 (warm-up), so losses[1] is the initial loss again
    assert losses[2] < start and max(losses[2:]) < start, losses  # before: 16.4, 8.3, then 12.1
    assert losses[-1] < 0.6 * start, losses
