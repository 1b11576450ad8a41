"""Padding safety (a batch of N equals N batches of one) and cached generation equals uncached, for every connector."""

from __future__ import annotations

import pytest
import torch
from conftest import build_inputs, random_audio, random_texts, slice_audio, tiny_pal

CONNECTORS = ["plits", "plits_qformer", "lal", "pal", "pal_summary"]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("connector", CONNECTORS)
def test_batch_of_n_equals_n_batches_of_one(connector, padding_side):
    model, _ = tiny_pal(connector)
    texts = random_texts([9, 14, 6])
    audio = random_audio(model.config, [7, 3, 5])
    batch = build_inputs(model, texts, audio, padding_side)
    with torch.no_grad():
        batched = model(**batch, audio=audio).logits
        for row in range(3):
            alone_audio = slice_audio(audio, row)
            alone = build_inputs(model, [texts[row]], alone_audio)
            logits = model(**alone, audio=alone_audio).logits[0]
            real = batch["attention_mask"][row].bool()
            # reorder: a padded batch runs other GEMM shapes than one row alone
            torch.testing.assert_close(batched[row][real], logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("connector", CONNECTORS)
def test_batched_greedy_generation_equals_single(connector):
    model, _ = tiny_pal(connector)
    texts = random_texts([9, 14, 6], seed=3)
    audio = random_audio(model.config, [7, 3, 5], seed=3)
    batch = build_inputs(model, texts, audio)
    with torch.no_grad():
        out = model.generate(**batch, audio=audio, max_new_tokens=8, do_sample=False, pad_token_id=0)
        new = out[:, batch["input_ids"].shape[1] :]
        for row in range(3):
            alone_audio = slice_audio(audio, row)
            alone = build_inputs(model, [texts[row]], alone_audio)
            single = model.generate(**alone, audio=alone_audio, max_new_tokens=8, do_sample=False, pad_token_id=0)
            assert single[0, alone["input_ids"].shape[1] :].tolist() == new[row].tolist()


@pytest.mark.parametrize("connector", CONNECTORS)
def test_cached_generation_equals_uncached(connector):
    model, _ = tiny_pal(connector)
    texts = random_texts([10, 7], seed=5)
    audio = random_audio(model.config, [6, 4], seed=5)
    batch = build_inputs(model, texts, audio)
    with torch.no_grad():
        cached = model.generate(**batch, audio=audio, max_new_tokens=10, do_sample=False, pad_token_id=0)
        uncached = model.generate(
            **batch, audio=audio, max_new_tokens=10, do_sample=False, pad_token_id=0, use_cache=False
        )
    assert cached.tolist() == uncached.tolist()


def test_lal_audio_kv_is_computed_once_when_generating():
    model, _ = tiny_pal("lal")
    texts = random_texts([8], seed=1)
    audio = random_audio(model.config, [5], seed=1)
    calls = []
    handle = model.lal.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model.generate(**build_inputs(model, texts, audio), audio=audio, max_new_tokens=6, do_sample=False,
                       pad_token_id=0, min_new_tokens=6)
    handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("connector", ["lal", "pal"])
def test_beam_search_keeps_audio_rows_with_their_beams(connector):
    """Beam search expands every example to its beams, and the LAL audio rows must be expanded with them: a batch of
    two examples of different audio gives each the beams it gets alone. (Reordering only permutes one example's
    beams, which share their audio, so it moves nothing.)"""
    model, _ = tiny_pal(connector)
    texts = random_texts([8, 5], seed=7)
    audio = random_audio(model.config, [6, 2], seed=7)
    batch = build_inputs(model, texts, audio)
    kwargs = dict(max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0, early_stopping=True)
    with torch.no_grad():
        out = model.generate(**batch, audio=audio, **kwargs)[:, batch["input_ids"].shape[1] :]
        for row in range(2):
            alone_audio = slice_audio(audio, row)
            alone = build_inputs(model, [texts[row]], alone_audio)
            single = model.generate(**alone, audio=alone_audio, **kwargs)[0, alone["input_ids"].shape[1] :]
            assert single.tolist() == out[row].tolist()


@pytest.mark.parametrize("connector", CONNECTORS)
def test_text_only_row_in_an_audio_batch_is_the_bare_llm(connector):
    """A row whose audio masks are all False sees no audio: its logits equal the bare LLM's on its tokens."""
    model, bare = tiny_pal(connector)
    texts = random_texts([9, 7], seed=11)
    audio = random_audio(model.config, [5, 3], seed=11)
    for _, mask in audio.values():
        mask[1] = False
    batch = build_inputs(model, texts, audio, padding_side="right")
    assert not batch["audio_token_mask"][1].any()
    with torch.no_grad():
        ours = model(**batch, audio=audio).logits[1, :7]
        ref = bare(input_ids=torch.tensor([texts[1]])).logits[0]
    assert torch.isfinite(model(**batch, audio=audio).logits).all()
    # reorder
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
