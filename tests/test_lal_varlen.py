"""LAL on the varlen (FlashAttention-2 layout) path, checked on CPU through the plain-torch reference kernel.

The oracle is the registered `lal_sdpa` attention function (lal_injection.py) with an explicit 4-D mask; the reference
kernel itself is checked against a dense masked softmax written here.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from pal.audio_cache import AudioKV
from pal.lal_varlen import _with_bias_columns, lal_flash_varlen_attention, pack_lal_varlen, unpack, varlen_attention_reference

H, H_KV, D = 4, 2, 8
LAYER = 1


def _module(layer_idx: int = LAYER):
    """What the attention functions read from the LLM's attention module."""
    return SimpleNamespace(layer_idx=layer_idx, num_key_value_groups=H // H_KV, is_causal=True, training=False)


def _lal_sdpa():
    return AttentionInterface()["lal_sdpa"]


def _padding(lengths: list[int], width: int, side: str) -> torch.Tensor:
    """[B, width] bool, True on the `lengths[b]` real positions, padded on `side`."""
    pos = torch.arange(width)[None, :]
    n = torch.tensor(lengths)[:, None]
    return pos >= width - n if side == "left" else pos < n


def _mask_4d(text_real: torch.Tensor, q_len: int) -> torch.Tensor:
    """HF-style bool mask [B, 1, T, S]: query t (at key position S - T + t) attends real keys j <= its position."""
    keys = text_real.shape[1]
    causal = torch.ones(q_len, keys, dtype=torch.bool).tril(keys - q_len)
    return (causal[None] & text_real[:, None, :])[:, None]


def _inputs(seed: int, q_len: int, keys: int, audio_counts: list[int], num_audio: int = 5, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    batch = len(audio_counts)
    query = torch.randn(batch, H, q_len, D, generator=g)
    key, value = torch.randn(2, batch, H_KV, keys, D, generator=g)
    audio_k, audio_v = torch.randn(2, batch, H_KV, num_audio, D, generator=g)
    audio_mask = _padding(audio_counts, num_audio, "right")
    log_bias = -torch.tensor(audio_counts).clamp(min=1).float().log() if bias else None  # -log n_b
    audio = AudioKV({LAYER: audio_k}, {LAYER: audio_v}, audio_mask, log_bias)
    return query, key, value, audio


def _dense_reference(q, k, v, allowed, scale):
    """Masked softmax on dense [H, T, D] / [H_kv, K, D] tensors; allowed [T, K] bool."""
    k, v = k.repeat_interleave(H // H_KV, 0), v.repeat_interleave(H // H_KV, 0)
    scores = (q @ k.transpose(1, 2) * scale).masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


# ----------------------------------------------------------------------------------------------------------------------
# The reference kernel
# ----------------------------------------------------------------------------------------------------------------------


def test_reference_kernel_matches_dense_softmax_per_segment():
    g = torch.Generator().manual_seed(0)
    lengths_q, lengths_k = [3, 2, 4], [7, 0, 4]  # a segment with no keys at all, and one with T_b == K_b
    q = torch.randn(sum(lengths_q), H, D, generator=g)
    k, v = torch.randn(2, sum(lengths_k), H_KV, D, generator=g)
    cu_q = torch.tensor([0, 3, 5, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 7, 7, 11], dtype=torch.int32)
    out, lse = varlen_attention_reference(q, k, v, cu_q, cu_k, 4, 7, softmax_scale=0.4, causal=True, return_lse=True)
    assert out.shape == (9, H, D) and lse.shape == (H, 9) and lse.dtype == torch.float32
    top_left_differs = False
    for (q0, q1), (k0, k1) in zip([(0, 3), (5, 9)], [(0, 7), (7, 11)]):
        t_b, k_b = q1 - q0, k1 - k0
        bottom_right = torch.ones(t_b, k_b, dtype=torch.bool).tril(k_b - t_b)
        want, want_lse = _dense_reference(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1),
                                          v[k0:k1].transpose(0, 1), bottom_right, 0.4)
        # reorder: the varlen kernel against dense attention (class in conftest); the wrong alignment differs by > 1e-3
        torch.testing.assert_close(out[q0:q1], want.transpose(0, 1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse[:, q0:q1], want_lse, atol=1e-5, rtol=1e-5)
        top_left = torch.ones(t_b, k_b, dtype=torch.bool).tril()
        wrong, _ = _dense_reference(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1),
                                    v[k0:k1].transpose(0, 1), top_left, 0.4)
        top_left_differs |= not torch.allclose(out[q0:q1], wrong.transpose(0, 1), atol=1e-3)
    assert top_left_differs  # the alignment is really tested: top-left gives another answer when T_b < K_b
    # The key-less segment: output 0 and lse +inf, as FA2 writes for a row it skips.
    assert torch.equal(out[3:5], torch.zeros(2, H, D)) and torch.isinf(lse[:, 3:5]).all() and (lse[:, 3:5] > 0).all()
    # Non-causal: every query of a segment sees all its keys.
    full = varlen_attention_reference(q, k, v, cu_q, cu_k, 4, 7, softmax_scale=0.4)
    want, _ = _dense_reference(q[:3].transpose(0, 1), k[:7].transpose(0, 1), v[:7].transpose(0, 1),
                               torch.ones(3, 7, dtype=torch.bool), 0.4)
    # reorder
    torch.testing.assert_close(full[:3], want.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_reference_kernel_refuses_dropout_and_short_max_seqlen():
    q, k = torch.randn(3, H, D), torch.randn(3, H_KV, D)
    cu = torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match="dropout"):
        varlen_attention_reference(q, k, k, cu, cu, 3, 3, dropout_p=0.1)
    with pytest.raises(ValueError, match="max_seqlen"):
        varlen_attention_reference(q, k, k, cu, cu, 2, 3)


# ----------------------------------------------------------------------------------------------------------------------
# Packing, and the whole attention function against lal_sdpa
# ----------------------------------------------------------------------------------------------------------------------


def test_packing_layout_puts_real_audio_before_real_text():
    query, key, value, audio = _inputs(1, q_len=6, keys=6, audio_counts=[5, 2, 0])
    text_real = _padding([6, 4, 3], 6, "left")
    packing = pack_lal_varlen(query, key, value, audio.keys[LAYER], audio.values[LAYER], audio.mask, text_real)
    assert packing.cu_seqlens_q.tolist() == [0, 6, 10, 13] and packing.cu_seqlens_k.tolist() == [0, 11, 17, 20]
    assert packing.cu_seqlens_q.dtype == packing.cu_seqlens_k.dtype == torch.int32
    assert (packing.max_seqlen_q, packing.max_seqlen_k) == (6, 11)
    # Example 1: its 2 real audio keys, then its 4 real text keys (positions 2..5 under left padding).
    torch.testing.assert_close(packing.k[11:13], audio.keys[LAYER][1, :, :2].transpose(0, 1))
    torch.testing.assert_close(packing.k[13:17], key[1, :, 2:].transpose(0, 1))
    torch.testing.assert_close(packing.q[6:10], query[1, :, 2:].transpose(0, 1))
    # unpack is the inverse at real queries and writes zeros elsewhere.
    back = unpack(packing.q, packing)
    assert torch.equal(back[1, 2:], query[1, :, 2:].transpose(0, 1)) and torch.equal(back[1, :2], torch.zeros(2, H, D))


@pytest.mark.parametrize("mask_form", ["bool_4d", "float_4d", "padding_2d"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("side", ["left", "right"])
def test_varlen_equals_lal_sdpa(side, bias, mask_form):
    query, key, value, audio = _inputs(2, q_len=6, keys=6, audio_counts=[5, 2, 0], bias=bias)
    text_real = _padding([6, 4, 3], 6, side)
    mask = _mask_4d(text_real, 6)
    scaling = None if bias else 0.3  # None: the default D_h^-0.5 of the real head dim, also with bias columns
    want, _ = _lal_sdpa()(_module(), query, key, value, mask, scaling=scaling, lal_audio=audio)
    given = {"bool_4d": mask, "float_4d": torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min),
             "padding_2d": text_real.long()}[mask_form]
    got, weights = lal_flash_varlen_attention(_module(), query, key, value, given, scaling=scaling, lal_audio=audio)
    assert weights is None and got.shape == (3, 6, H, D)
    real = text_real  # no cache: query t is key position t
    # reorder: packed varlen against the SDPA path
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))
    # Teeth: the audio (and the bias) change the answer of the examples that have audio.
    plain, _ = sdpa_attention_forward(_module(), query, key, value, mask, scaling=scaling)
    assert not torch.allclose(got[:2][real[:2]], plain[:2][real[:2]], atol=1e-3)
    # reorder
    torch.testing.assert_close(got[2][real[2]], plain[2][real[2]], atol=1e-5, rtol=1e-5)  # 0 audio tokens: plain
    if bias:
        unbiased = AudioKV(audio.keys, audio.values, audio.mask, None)
        other, _ = lal_flash_varlen_attention(_module(), query, key, value, given, scaling=scaling, lal_audio=unbiased)
        assert not torch.allclose(got[0][real[0]], other[0][real[0]], atol=1e-3)


@pytest.mark.parametrize("bias", [False, True])
def test_decode_step_and_chunk_with_cache(bias):
    # Decode: T = 1 query over S = 10 cached keys, example 1 left-padded by 3; then a 3-token chunk with mask None.
    query, key, value, audio = _inputs(3, q_len=1, keys=10, audio_counts=[5, 2, 0], bias=bias)
    text_real = _padding([10, 7, 10], 10, "left")
    mask = _mask_4d(text_real, 1)
    want, _ = _lal_sdpa()(_module(), query, key, value, mask, scaling=0.3, lal_audio=audio)
    got, _ = lal_flash_varlen_attention(_module(), query, key, value, mask, scaling=0.3, lal_audio=audio)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    query, key, value, audio = _inputs(4, q_len=3, keys=10, audio_counts=[5, 2, 0], bias=bias)
    want, _ = _lal_sdpa()(_module(), query, key, value, None, scaling=0.3, lal_audio=audio)  # bottom-right causal
    got, _ = lal_flash_varlen_attention(_module(), query, key, value, None, scaling=0.3, lal_audio=audio)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Teeth: top-left alignment of the 3 queries (the first 3 keys only) is a different answer.
    top_left = torch.ones(3, 10, dtype=torch.bool).tril()[None, None].expand(3, 1, 3, 10)
    wrong, _ = _lal_sdpa()(_module(), query, key, value, top_left, scaling=0.3, lal_audio=audio)
    assert not torch.allclose(got, wrong, atol=1e-3)


def test_layer_without_audio_is_plain_causal_attention():
    query, key, value, audio = _inputs(5, q_len=6, keys=6, audio_counts=[5, 2, 0])
    text_real = _padding([6, 4, 3], 6, "left")
    mask = _mask_4d(text_real, 6)
    want, _ = sdpa_attention_forward(_module(), query, key, value, mask, scaling=0.3)
    for lal_audio, layer in [(None, LAYER), (audio, LAYER + 1)]:
        got, _ = lal_flash_varlen_attention(_module(layer), query, key, value, mask, scaling=0.3, lal_audio=lal_audio)
        torch.testing.assert_close(got[text_real], want[text_real], atol=1e-5, rtol=1e-5)


def test_gradients_match_lal_sdpa_with_bias():
    query, key, value, audio = _inputs(6, q_len=6, keys=6, audio_counts=[5, 2, 0], bias=True)
    audio_k, audio_v = audio.keys[LAYER], audio.values[LAYER]
    text_real = _padding([6, 4, 3], 6, "right")
    mask = _mask_4d(text_real, 6)
    weight = torch.randn(3, 6, H, D, generator=torch.Generator().manual_seed(7)) * text_real[:, :, None, None]
    grads = []
    for fn in (_lal_sdpa(), lal_flash_varlen_attention):
        leaves = [t.clone().requires_grad_() for t in (query, key, value, audio_k, audio_v)]
        lal_audio = AudioKV({LAYER: leaves[3]}, {LAYER: leaves[4]}, audio.mask, audio.bias)
        out, _ = fn(_module(), *leaves[:3], mask, scaling=0.3, lal_audio=lal_audio)
        (out * weight).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_bias_columns_keep_the_offset_in_bf16():
    bias = -torch.tensor([5.0, 2.0, 513.0]).log()
    scale = 64 ** -0.5
    shapes = [(3, H, 2, D), (3, H_KV, 4, D), (3, H_KV, 4, D), (3, H_KV, 5, D), (3, H_KV, 5, D)]
    tensors = [torch.zeros(s, dtype=torch.bfloat16) for s in shapes]
    query, key, value, audio_k, audio_v = _with_bias_columns(*tensors, bias, scale)
    assert query.shape[-1] == key.shape[-1] == value.shape[-1] == audio_k.shape[-1] == audio_v.shape[-1] == D + 2
    assert torch.equal(query[..., D:], torch.ones_like(query[..., D:]))
    assert not key[..., D:].any() and not value[..., D:].any() and not audio_v[..., D:].any()
    logit = scale * audio_k[:, 0, 0, D:].float().sum(-1)  # what the kernel adds: scale * (1 * hi + 1 * lo)
    assert (logit - bias).abs().max() < 1e-4  # hi + lo: ~3e-6 relative, far below bf16's own 4e-3
    hi_only = scale * audio_k[:, 0, 0, D].float()
    assert (hi_only - bias).abs().max() > 1e-3  # one bf16 number alone would lose the offset's low bits


def test_short_padding_mask_drops_empty_static_cache_slots():
    # A static cache holds 4 unused slots after the 6 real positions; the 2-D mask covers only the 6 (as HF's
    # flash_attention_mask gives it), so the trailing slots must be ignored, whatever they contain.
    query, key, value, audio = _inputs(8, q_len=6, keys=6, audio_counts=[5, 2, 0], bias=True)
    text_real = _padding([6, 4, 3], 6, "left")
    want, _ = _lal_sdpa()(_module(), query, key, value, _mask_4d(text_real, 6), scaling=0.3, lal_audio=audio)
    junk = torch.randn(2, 3, H_KV, 4, D) * 100
    got, _ = lal_flash_varlen_attention(_module(), query, torch.cat([key, junk[0]], 2), torch.cat([value, junk[1]], 2),
                                        text_real, scaling=0.3, lal_audio=audio)
    torch.testing.assert_close(got[text_real], want[text_real], atol=1e-5, rtol=1e-5)


def test_bf16_inputs_stay_close_to_fp32():
    query, key, value, audio = _inputs(9, q_len=6, keys=6, audio_counts=[5, 2, 0], bias=True)
    text_real = _padding([6, 4, 3], 6, "right")
    mask = _mask_4d(text_real, 6)
    to_bf16 = lambda t: t.bfloat16()  # noqa: E731
    audio_bf16 = AudioKV({LAYER: to_bf16(audio.keys[LAYER])}, {LAYER: to_bf16(audio.values[LAYER])}, audio.mask,
                            audio.bias)
    got, _ = lal_flash_varlen_attention(_module(), to_bf16(query), to_bf16(key), to_bf16(value), mask, scaling=0.3,
                                        lal_audio=audio_bf16)
    assert got.dtype == torch.bfloat16
    # The oracle sees the same bf16-rounded inputs, in fp32: what is left is the output rounding (2^-8 relative).
    up = lambda t: t.bfloat16().float()  # noqa: E731
    audio_up = AudioKV({LAYER: up(audio.keys[LAYER])}, {LAYER: up(audio.values[LAYER])}, audio.mask, audio.bias)
    want, _ = _lal_sdpa()(_module(), up(query), up(key), up(value), mask, scaling=0.3, lal_audio=audio_up)
    torch.testing.assert_close(got[text_real].float(), want[text_real], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("connector", ["lal", "pal"])
def test_flash_backend_in_a_model_equals_sdpa(monkeypatch, connector):
    """The "flash" backend wired into a model: prefill on the varlen path (its reference kernel on CPU), decoding
    steps on the in-place path; logits and greedy generation equal the SDPA backend's."""
    from conftest import build_inputs, random_audio, random_texts, tiny_pal

    import pal.lal_injection as lal_injection
    from pal.lal_injection import enable_lal_attention

    calls = []
    monkeypatch.setattr(lal_injection, "_varlen_can_run",
                        lambda q, k, dropout, window, custom_mask=False: k.shape[2] == q.shape[2] and not custom_mask
                        and (calls.append(q.shape) or True))
    model, _ = tiny_pal(connector)
    texts = random_texts([9, 13], seed=4)
    audio = random_audio(model.config, [5, 3], seed=4)
    batch = build_inputs(model, texts, audio)
    with torch.no_grad():
        expected = model(**batch, audio=audio).logits
        expected_tokens = model.generate(**batch, audio=audio, max_new_tokens=5, do_sample=False, pad_token_id=0)
        enable_lal_attention(model.llm, "flash")
        assert model.llm.config._attn_implementation == "lal_flash"
        got = model(**batch, audio=audio).logits
        tokens = model.generate(**batch, audio=audio, max_new_tokens=5, do_sample=False, pad_token_id=0)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    assert tokens.tolist() == expected_tokens.tolist() and calls  # prefills took the varlen path
