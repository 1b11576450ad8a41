"""LAL decoding reads the audio keys/values where prefill wrote them: no per-token copy, same attention."""

from __future__ import annotations

import pytest
import torch
from conftest import build_inputs, random_audio, random_texts, tiny_pal
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from pal.audio_cache import AudioKV
from pal.lal_injection import _decoding_attention, _lal_attention


class _Layer:  # what HF's attention functions read from the attention module
    layer_idx, is_causal, training = 0, True, False
    num_key_value_groups = 2


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("q_len", [1, 3])
def test_decoding_attention_equals_concatenated_keys(with_bias, q_len):
    gen = torch.Generator().manual_seed(0)
    batch, kv_heads, heads, dim, n_a, s = 3, 2, 4, 8, 5, 9
    query = torch.randn(batch, heads, q_len, dim, generator=gen)
    key, value = (torch.randn(batch, kv_heads, s, dim, generator=gen) for _ in range(2))
    audio_k, audio_v = (torch.randn(batch, kv_heads, n_a, dim, generator=gen) for _ in range(2))
    audio_mask = torch.arange(n_a)[None, :] < torch.tensor([5, 2, 0])[:, None]  # the last row has no audio
    bias = -audio_mask.sum(-1).clamp(min=1).float().log() if with_bias else None
    text_real = torch.ones(batch, s, dtype=torch.bool)
    text_real[1, :3] = False  # left padding
    causal = torch.ones(q_len, s, dtype=torch.bool).tril(s - q_len)
    mask = (causal[None] & text_real[:, None, :])[:, None]  # [B, 1, T, S]
    audio = AudioKV({0: audio_k}, {0: audio_v}, audio_mask, bias)

    expected, _ = _lal_attention(sdpa_attention_forward)(_Layer(), query, key, value, mask, scaling=dim**-0.5,
                                                         dropout=1e-9, lal_audio=audio)  # dropout > 0: the prefill path
    got = _decoding_attention(query, key, value, mask, dim**-0.5, audio_k, audio_v, audio)
    # reorder: scores joined instead of keys: the same sums split in two
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    without_mask = _decoding_attention(query, key, value, None, dim**-0.5, audio_k, audio_v, audio)
    causal_only = causal[None, None].expand(batch, 1, q_len, s)
    torch.testing.assert_close(without_mask, _decoding_attention(query, key, value, causal_only, dim**-0.5, audio_k,
                                                                 audio_v, audio))


def test_a_decoding_step_never_copies_the_audio_keys(monkeypatch):
    model, _ = tiny_pal("lal")
    texts = random_texts([8, 11], seed=2)
    audio = random_audio(model.config, [6, 4], seed=2)
    batch = build_inputs(model, texts, audio)
    with torch.no_grad():
        out = model(**batch, audio=audio, use_cache=True)
        cache = out.past_key_values
        audio_storages = {t.untyped_storage().data_ptr() for kv in (cache.lal_audio.keys, cache.lal_audio.values)
                          for t in kv.values()}
        copied = []
        real_cat = torch.cat

        def watching_cat(tensors, *args, **kwargs):
            copied.extend(t for t in tensors if t.untyped_storage().data_ptr() in audio_storages)
            return real_cat(tensors, *args, **kwargs)

        monkeypatch.setattr(torch, "cat", watching_cat)
        token = out.logits[:, -1:].argmax(-1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        step = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
    assert step.logits.shape[:2] == (2, 1)
    assert not copied, f"{len(copied)} audio key/value tensors were concatenated in a decoding step"


@pytest.mark.parametrize("connector,audio_norm", [("lal", "none"), ("pal", "none"), ("pal_xattn", "none"),
                                                  ("pal", "standardize")])
def test_questions_about_one_clip_share_its_audio_keys(connector, audio_norm):
    """`prepare_audio(audio, repeats)` stores one row of LAL keys/values per clip for all the prompts about it, and
    decoding reads it for all of them: the answers equal those of the batch with each clip repeated. With a fitted
    feature standardisation too: the same-audio check compares the given features standardised once, as prepared."""
    model, _ = tiny_pal(connector, audio_norm=audio_norm)
    texts = random_texts([8, 11, 6, 9], seed=6)
    clips = random_audio(model.config, [7, 3], seed=6)  # two clips, two questions each
    if audio_norm != "none":
        model.fit_audio_norm([random_audio(model.config, [9, 5], seed=7)])
    repeated = {n: (t.repeat_interleave(2, 0), m.repeat_interleave(2, 0)) for n, (t, m) in clips.items()}
    batch = build_inputs(model, texts, repeated)
    def decoding_step_logits(cache):  # prefill, then one decoding step (the path that reads the shared rows)
        out = model(**batch, audio=repeated, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        mask = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        return model(input_ids=token, attention_mask=mask, past_key_values=out.past_key_values).logits

    with torch.no_grad():
        cache = model.prepare_audio(clips, repeats=2)
        assert cache.lal_audio.rows_per_audio == 2
        assert all(k.shape[0] == 2 for k in cache.lal_audio.keys.values())
        shared = model.generate(**batch, audio=repeated, past_key_values=cache, max_new_tokens=6, do_sample=False,
                                pad_token_id=0)
        plain = model.generate(**batch, audio=repeated, max_new_tokens=6, do_sample=False, pad_token_id=0)
        expected = decoding_step_logits(None)
        got = decoding_step_logits(model.prepare_audio(clips, repeats=2))
        swapped = model.prepare_audio({n: (t.flip(0), m.flip(0)) for n, (t, m) in clips.items()}, repeats=2)
        swapped.audio_source = cache.audio_source  # bypass the same-audio check: each prompt now reads the other clip
        wrong = decoding_step_logits(swapped)
    assert shared.tolist() == plain.tolist()
    # reorder; the swapped clip differs by > 1e-4, so the check can fail
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(wrong, expected, atol=1e-4)  # the check can tell which clip a prompt read
