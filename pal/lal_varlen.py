"""LAL on FlashAttention-2's variable-length kernel: audio keys packed in front of each example's text keys.

The LAL attention of an audio layer (lal_injection.py) is one softmax in which every text query sees all real audio
keys of its own example plus the causal text keys. `flash_attn_varlen_func` takes the batch packed without padding:
q [total_q, H, D_h], k/v [total_k, H_kv, D_h], and `cu_seqlens_q/k` [B+1] (int32) marking where each example's
segment starts. With causal=True its mask is aligned to the bottom right of each segment (the docstring of
`flash_attn_varlen_func`; README "2.1: Change behavior of causal flag": v2.0 aligned it top-left): query i of a
segment with T_b queries and K_b keys sees keys j <= i + K_b - T_b. So if example b's segment holds its n_b real audio
keys, then its real text keys, and its T_b real queries are the last T_b of those text keys, one causal call gives
every query all n_b audio keys and exactly the text keys up to its own position. No mask is ever materialised and
padding costs nothing.

The audio bias (`audio_bias="log_count"`, an additive logit offset bias_b on every real audio key of example b) has
no slot in the FA2 API. We fold it into two extra head dimensions instead of a second kernel call:
    q' = [q, 1, 1],  k'_audio = [k_a, hi_b, lo_b],  k'_text = [k_t, 0, 0],  v' = [v, 0, 0],
    hi_b + lo_b = bias_b / scale,
so scale * q'.k' = scale * q.k + bias_b on audio keys and scale * q.k on text keys: the same single softmax, in one
call. Why not two calls (audio-only, causal text) merged by their log-sum-exps: that forward is exact, but
FlashAttention's autograd functions return no gradient for `softmax_lse` (`backward(ctx, dout, *args)` drops it), so
the merge weights would be constants to autograd and the gradients to q and k would be wrong in training.
hi/lo: bias_b / scale is split into two numbers of the working dtype, so bf16 keeps about 16 significant bits of it.
Cost: the head dim grows by 2 (FA2 pads it to a multiple of 8 itself, and supports head dims up to 256).

On CPU, or without `flash_attn`, `varlen_attention_reference` (plain torch, loop over segments) computes the same
thing, so everything here is testable without a GPU.

Notation: B batch, T text (query) length, S text key length (cache + T), N_a audio tokens, H query heads,
H_kv key/value heads, D_h head dim.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from packaging.version import Version

# ----------------------------------------------------------------------------------------------------------------------
# Packing: padded [B, ...] tensors → one segment per example, audio keys first
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LALVarlenPacking:
    """The batch packed for a varlen kernel, plus what `unpack` needs to put the output back.

    q: [total_q, H, D_h]; k, v: [total_k, H_kv, D_h]; cu_seqlens_q/k: [B+1] int32 segment starts;
    max_seqlen_q/k: the longest segment; query_index: [total_q] position b * T + t of each packed query.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    query_index: torch.Tensor
    batch: int
    q_len: int


def _cu_seqlens(counts: torch.Tensor) -> torch.Tensor:
    """counts [B] → [0, c_0, c_0 + c_1, ...] int32 [B+1], the layout the FA2 varlen kernel reads."""
    return F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)


def pack_lal_varlen(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, audio_k: torch.Tensor | None,
    audio_v: torch.Tensor | None, audio_mask: torch.Tensor | None, text_key_mask: torch.Tensor,
) -> LALVarlenPacking:
    """Pack one attention call: example b's segment is [its real audio keys ; its real text keys].

    Args:
        query: [B, H, T, D_h]; query t sits at key position S - T + t.
        key, value: [B, H_kv, S, D_h] text keys/values (cache + current tokens).
        audio_k, audio_v: [B, H_kv, N_a, D_h] or None (no audio: segments are text only).
        audio_mask: [B, N_a] bool, True = real audio token (None with no audio).
        text_key_mask: [B, S] bool, True = real text key; any padding pattern.
    Returns:
        LALVarlenPacking. A query is real when its own key position is real, so example b's T_b real queries are
        always its last T_b real text keys, which is what bottom-right causal alignment needs.
    """
    batch, heads, q_len, head_dim = query.shape
    text_key_mask = text_key_mask.to(device=query.device, dtype=torch.bool)
    query_real = text_key_mask[:, key.shape[2] - q_len:]  # [B, T]
    if audio_k is None:
        keys, values, key_real = key, value, text_key_mask
    else:
        keys = torch.cat([audio_k.to(key.dtype), key], dim=2)  # [B, H_kv, N_a + S, D_h]
        values = torch.cat([audio_v.to(value.dtype), value], dim=2)
        key_real = torch.cat([audio_mask.to(device=query.device, dtype=torch.bool), text_key_mask], dim=1)
    # Row-major flat indices: grouped by example, and in order within one (audio first, then text).
    query_index = query_real.reshape(-1).nonzero().squeeze(1)
    key_index = key_real.reshape(-1).nonzero().squeeze(1)
    kv_heads = keys.shape[1]
    q = query.transpose(1, 2).reshape(batch * q_len, heads, head_dim).index_select(0, query_index)
    k = keys.transpose(1, 2).reshape(-1, kv_heads, keys.shape[-1]).index_select(0, key_index)
    v = values.transpose(1, 2).reshape(-1, kv_heads, values.shape[-1]).index_select(0, key_index)
    q_counts, k_counts = query_real.sum(1), key_real.sum(1)
    return LALVarlenPacking(
        q, k, v, _cu_seqlens(q_counts), _cu_seqlens(k_counts),
        int(q_counts.max()), int(k_counts.max()),  # host syncs, as in HF's own FA2 path (the kernel needs ints)
        query_index, batch, q_len,
    )


def unpack(packed_out: torch.Tensor, packing: LALVarlenPacking) -> torch.Tensor:
    """packed_out [total_q, H, D] → [B, T, H, D], zeros at padded query positions."""
    heads, dim = packed_out.shape[1:]
    out = packed_out.new_zeros(packing.batch * packing.q_len, heads, dim)
    out = out.index_copy(0, packing.query_index, packed_out)  # out of place: differentiable
    return out.view(packing.batch, packing.q_len, heads, dim)


# ----------------------------------------------------------------------------------------------------------------------
# The kernel: FlashAttention-2 on CUDA, a plain-torch reference elsewhere
# ----------------------------------------------------------------------------------------------------------------------


def varlen_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float | None = None, causal: bool = False,
    return_lse: bool = False, dropout_p: float = 0.0,
):
    """The semantics of `flash_attn_varlen_func`, one segment at a time, in fp32.

    q [total_q, H, D], k [total_k, H_kv, D], v [total_k, H_kv, D_v]; query head h reads key/value head
    h // (H / H_kv). causal: bottom-right aligned, query i of a (T_b, K_b) segment sees keys j <= i + K_b - T_b.
    Returns out [total_q, H, D_v] in q's dtype, and with `return_lse` also lse [H, total_q] fp32, the natural-log
    log-sum-exp of the scaled scores of each query row. A row with no visible key gets out 0 and lse +inf, what the
    FA2 kernel writes when it exits early on an empty row.
    """
    if dropout_p > 0:
        raise ValueError("varlen_attention_reference has no dropout; run with dropout 0 (eval) or on CUDA with "
                         "flash_attn installed.")
    heads, head_dim = q.shape[1], q.shape[2]
    groups = heads // k.shape[1]
    scale = softmax_scale if softmax_scale is not None else head_dim ** -0.5
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    lengths_q = [b - a for a, b in zip(starts_q, starts_q[1:])]
    lengths_k = [b - a for a, b in zip(starts_k, starts_k[1:])]
    if max(lengths_q, default=0) > max_seqlen_q or max(lengths_k, default=0) > max_seqlen_k:
        raise ValueError("max_seqlen_q/k is shorter than a segment (the FA2 kernel would silently skip rows).")
    outs, lses = [], []
    for q0, q1, k0, k1 in zip(starts_q, starts_q[1:], starts_k, starts_k[1:]):
        qb = q[q0:q1].float().transpose(0, 1)  # [H, T_b, D]
        kb = k[k0:k1].float().repeat_interleave(groups, dim=1).transpose(0, 1)  # [H, K_b, D]
        vb = v[k0:k1].float().repeat_interleave(groups, dim=1).transpose(0, 1)  # [H, K_b, D_v]
        scores = qb @ kb.transpose(1, 2) * scale  # [H, T_b, K_b]
        if causal:
            t_b, k_b = q1 - q0, k1 - k0
            rows = torch.arange(t_b, device=q.device)[:, None]
            cols = torch.arange(k_b, device=q.device)[None, :]
            scores = scores.masked_fill(cols > rows + k_b - t_b, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)  # [H, T_b], -inf on an empty row
        visible = torch.isfinite(lse)
        # Subtract 0 on empty rows: exp(-inf - 0) = 0 keeps both the output and the gradients free of NaN.
        probs = (scores - torch.where(visible, lse, torch.zeros_like(lse))[..., None]).exp()
        outs.append((probs @ vb).transpose(0, 1))  # [T_b, H, D_v]
        lses.append(torch.where(visible, lse, torch.full_like(lse, float("inf"))))
    out = torch.cat(outs, dim=0).to(q.dtype) if outs else q.new_zeros(0, heads, v.shape[-1])
    if not return_lse:
        return out
    return out, torch.cat(lses, dim=1) if lses else q.new_zeros(heads, 0, dtype=torch.float32)


@functools.lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    """CUDA is present and `flash_attn` >= 2.1 imports (2.0 aligned the causal mask top-left: silently wrong here)."""
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn
    except ImportError:
        return False
    return Version(flash_attn.__version__).release[:2] >= (2, 1)


def _flash_attn_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                       causal=False, return_lse=False, dropout_p=0.0):
    """`flash_attn_varlen_func` behind the reference's signature (its `return_attn_probs=True` returns
    (out, softmax_lse [H, total_q], S_dmask); we keep the first two)."""
    from flash_attn import flash_attn_varlen_func

    result = flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                    dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
                                    return_attn_probs=return_lse)
    return result[:2] if return_lse else result


def flash_kernel_runs(query: torch.Tensor) -> bool:
    """Whether FA2 can take this query: on CUDA, in fp16/bf16, with flash_attn >= 2.1 importable."""
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and flash_attn_available()


def _varlen_kernel(query: torch.Tensor):
    """FA2 where it can run (`flash_kernel_runs`), else the plain-torch reference."""
    return _flash_attn_kernel if flash_kernel_runs(query) else varlen_attention_reference


# ----------------------------------------------------------------------------------------------------------------------
# The Hugging Face attention function
# ----------------------------------------------------------------------------------------------------------------------


def _text_keys(attention_mask: torch.Tensor | None, key: torch.Tensor, value: torch.Tensor):
    """Read which text keys are real from whatever mask HF hands the backend → (key, value, text_key_mask [B, S]).

    None: no padding, every key is real. 2-D [B, S_m] (HF's `flash_attention_mask`, or a raw padding mask): True/1 =
    real; shorter than S only with a static cache, whose trailing empty slots we drop as HF's own FA2 path does.
    4-D [B|1, 1|H, T, S] bool (True = attend) or additive float (blocked = dtype min or -inf): a key is real if any
    query row of its example may attend it. Only causal + padding masks are representable here (no sliding windows,
    no custom patterns): the kernel re-creates the causal part itself.
    """
    batch, text_keys = key.shape[0], key.shape[2]
    if attention_mask is None:
        return key, value, torch.ones(batch, text_keys, dtype=torch.bool, device=key.device)
    if attention_mask.dim() == 2:
        mask = attention_mask.to(device=key.device, dtype=torch.bool)[:, -text_keys:]
        length = mask.shape[1]
        return key[:, :, :length], value[:, :, :length], mask.expand(batch, length)
    if attention_mask.dim() == 4:
        if attention_mask.shape[-1] != text_keys:
            raise ValueError(f"4-D attention mask covers {attention_mask.shape[-1]} keys, the layer has {text_keys}.")
        allowed = attention_mask
        if allowed.dtype != torch.bool:
            allowed = allowed > torch.finfo(allowed.dtype).min / 2
        return key, value, allowed.any(dim=2).any(dim=1).to(key.device).expand(batch, text_keys)
    raise ValueError(f"attention mask of shape {tuple(attention_mask.shape)}: expected None, [B, S] or 4-D.")


def _with_bias_columns(query, key, value, audio_k, audio_v, bias: torch.Tensor, scale: float):
    """Append two head dims that add bias_b to every audio logit of example b (see the module docstring).

    query [B, H, T, D_h], key/value [B, H_kv, S, D_h], audio_k/v [B, H_kv, N_a, D_h], bias [B] → the same with
    D_h + 2. Padded audio keys get the offset too, harmlessly: they are never packed.
    """
    offset = bias.to(device=query.device, dtype=torch.float32) / scale  # [B], so that scale * offset = bias
    hi = offset.to(audio_k.dtype)
    lo = (offset - hi.float()).to(audio_k.dtype)  # what the working dtype dropped from `offset`
    batch, kv_heads, num_audio, _ = audio_k.shape
    columns = torch.stack([hi, lo], dim=-1)[:, None, None, :].expand(batch, kv_heads, num_audio, 2)

    def zeros(t):
        return torch.cat([t, t.new_zeros(*t.shape[:-1], 2)], dim=-1)

    query = torch.cat([query, query.new_ones(*query.shape[:-1], 2)], dim=-1)
    return query, zeros(key), zeros(value), torch.cat([audio_k, columns], dim=-1), zeros(audio_v)


def lal_flash_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, lal_audio=None,
                               **kwargs):
    """HF attention function: LAL (or, for a layer without audio, plain causal attention) on the varlen kernel.

    query [B, H, T, D_h], key/value [B, H_kv, S, D_h] (S = cached text + T); `lal_audio` an AudioKV or None;
    `scaling` the softmax scale (HF passes module.scaling; None means D_h^-0.5). Returns (out [B, T, H, D_h], None),
    the layout of HF's sdpa function; padded query positions are zeros.
    """
    if not getattr(module, "is_causal", True):
        raise ValueError("lal_flash_varlen_attention is causal-only (decoder self-attention).")
    if kwargs.get("softcap") is not None:
        raise ValueError("lal_flash_varlen_attention does not support softcap.")
    window = kwargs.get("sliding_window")
    if window is not None and key.shape[2] > window:  # within the window a sliding mask is plain causal
        raise ValueError(f"a sliding window of {window} keys is in reach ({key.shape[2]} keys): the varlen path is plain "
                         "causal; the 'flash' backend sends such calls to SDPA, use it rather than this function.")
    head_dim = query.shape[-1]
    scale = scaling if scaling is not None else head_dim ** -0.5  # before any bias columns change the head dim
    key, value, text_key_mask = _text_keys(attention_mask, key, value)
    audio_k = audio_v = audio_mask = None
    if lal_audio is not None and module.layer_idx in lal_audio.keys:
        audio_k = lal_audio.keys[module.layer_idx].to(key.dtype)
        audio_v = lal_audio.values[module.layer_idx].to(value.dtype)
        audio_mask = lal_audio.mask
        if lal_audio.bias is not None:
            query, key, value, audio_k, audio_v = _with_bias_columns(query, key, value, audio_k, audio_v,
                                                                     lal_audio.bias, scale)
    packing = pack_lal_varlen(query, key, value, audio_k, audio_v, audio_mask, text_key_mask)
    out = _varlen_kernel(query)(
        packing.q, packing.k, packing.v, packing.cu_seqlens_q, packing.cu_seqlens_k, packing.max_seqlen_q,
        packing.max_seqlen_k, softmax_scale=scale, causal=True, dropout_p=dropout,
    )
    return unpack(out, packing)[..., :head_dim], None
