"""How LAL injects audio into a Hugging Face decoder: extra keys/values in the LLM's own self-attention.

For each audio layer l (docs/design.md#formula):
    A_l = P_l(E)                                  layer-specific projection of the frozen encoder tokens
    K_a = k_proj_l(input_norm_l(A_l)),  V_a = v_proj_l(input_norm_l(A_l))      the layer's own norm and projections
    attention(Q_text, [K_a ; K_text], [V_a ; V_text]) with mask [all real audio | causal text], one softmax.
Text tokens are the only queries, the residual stream and every FFN see text positions only, and audio is never
updated between layers. Layers outside the audio set run the untouched LLM.

Mechanics. The audio keys/values are computed once per forward (or once at prefill when generating) and handed down
through the decoder's `**kwargs` to the attention backend. We register three attention implementations: `lal_sdpa`
and `lal_eager` prepend the layer's audio K/V and widen the mask (once per forward, shared by the layers), then run
SDPA with grouped-query heads folded into the query axis (the keys are not repeated per head) or Hugging Face's own
`eager` function; `lal_flash` packs each example's audio keys in front of its text keys for FlashAttention-2's
varlen kernel on a GPU (lal_varlen.py). A decoding step (text keys already cached) joins the scores, not the keys:
the audio keys/values are read where prefill wrote them, never copied per token (`_decoding_attention`). Nothing of
the LLM is subclassed or renamed: checkpoint keys stay the LLM's, LoRA on k_proj/v_proj applies to audio keys too,
and a layer that gets no audio runs exactly the bare LLM's code.

Start-up. N_a fresh audio keys added to one softmax take most of the attention mass whatever their scores, so a
fresh connector would disturb the LLM before it learns anything. With `audio_bias="log_count"` every real audio key's
logit is offset by -log(n_b), n_b the example's real audio tokens, so the whole audio block weighs what one key of its
mean score would (log-mean-exp); `audio_offset` subtracts a further constant, for keys whose scores spread widely. It
stays one softmax over audio and text, with no gate and no new attention weights; "none" is the plain formula. What
each did to the start of training is measured in docs/findings.md.

RoPE. With `rope="prefix"` the b-th example's n_b real audio tokens sit at positions -n_b .. -1 and its text starts at
0. Attention scores depend only on position differences, so this is exactly the layout "audio just before the text"
(docs/design.md#rope), while the text keeps the positions the bare LLM would give it.

Several clips. A question about several clips (pal/clips.py) reads them joined along the token axis, in the order of
its `<audio>` placeholders, so with "prefix" RoPE the first clip lies farthest from the text, as in PLITS' layout.
Positions alone do not say where one clip ends: A_l of the c-th clip's tokens (c > 1) gets a learned tag t_c added
before the layer's norm and k/v projections, so its keys and values carry a clip-specific component a text query can
select ("the second clip"); the first clip's tag is zero, so one clip is the plain formula (docs/model.md#several-clips).

Notation: B batch, T text (query) length, S key length, N_a audio tokens, D_e encoder width, d LLM hidden size,
H_kv key/value heads, D_h head dim.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward, rotate_half

from .audio_cache import AudioKV
from .configuration_pal import LALConfig
from .lal_varlen import flash_attn_available, flash_kernel_runs, lal_flash_varlen_attention
from .masks import additive_mask

# ----------------------------------------------------------------------------------------------------------------------
# P_l: the per-layer projections of the encoder output
# ----------------------------------------------------------------------------------------------------------------------


class LowRankHead(nn.Module):
    """x + x·Vᵀ·Uᵀ: the shared projection plus one layer's rank-r correction. U starts at zero, so every layer starts
    from the shared projection (as LoRA starts from the frozen weight) and learns only how it differs."""

    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, hidden_size) / hidden_size**0.5)  # V [r, d]
        self.up = nn.Parameter(torch.zeros(hidden_size, rank))  # U [d, r]

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        """shared [B, N, d] → [B, N, d]."""
        return shared + (shared @ self.down.T) @ self.up.T


class LALProjection(nn.Module):
    """P_l for one encoder and every audio layer l: `heads[str(l)](trunk(E))`.

    `kind="linear"`: the trunk is the identity and each head is an independent Linear(D_e, d), so each layer receives
    its own projection of the original encoder features (docs/design.md#projections). `kind="mlp"`: a shared
    Linear-GELU-Linear trunk to d, then a Linear(d, d) head per layer. `kind="lowrank"`: a shared Linear(D_e, d)
    trunk, then per layer the trunk's output plus a rank-r correction (`LowRankHead`). Per audio token, "linear" costs
    L·D_e·d multiply-adds and "lowrank" D_e·d + L·2·d·r: with L = 30, D_e = 768, d = 576, r = 64, 13.3M against 2.7M.
    """

    def __init__(self, encoder_dim: int, hidden_size: int, layers: list[int], kind: str = "linear", rank: int = 64):
        super().__init__()
        if kind == "linear":
            self.trunk = nn.Identity()
            head = lambda: nn.Linear(encoder_dim, hidden_size)  # noqa: E731
        elif kind == "mlp":
            self.trunk = nn.Sequential(
                nn.Linear(encoder_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
            )
            head = lambda: nn.Linear(hidden_size, hidden_size)  # noqa: E731
        elif kind == "lowrank":
            self.trunk = nn.Linear(encoder_dim, hidden_size)
            head = lambda: LowRankHead(hidden_size, rank)  # noqa: E731
        else:
            raise ValueError(f"lal_config.projection = {kind!r}: expected 'linear', 'mlp' or 'lowrank'.")
        self.heads = nn.ModuleDict({str(layer): head() for layer in layers})

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens [B, N_e, D_e] → {str(layer): A_l [B, N_e, d]}, every layer at once (the connector instead runs
        `trunk` once and each head inside its layer's recomputable block)."""
        shared = self.trunk(tokens)
        return {layer: head(shared) for layer, head in self.heads.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Audio positions (RoPE) and keys/values of one layer (the keys/values type and the cache: audio_cache.py)
# ----------------------------------------------------------------------------------------------------------------------


def prefix_audio_positions(mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions of the audio tokens for the "prefix" layout: mask [B, N_a] → positions [B, N_a].

    The j-th real token of an example with n real tokens gets position j - n (so -n .. -1); padding gets 0 and is
    masked out of attention anyway.
    """
    real = mask.long()
    positions = real.cumsum(-1) - 1 - real.sum(-1, keepdim=True)
    return positions.masked_fill(~mask, 0)


def layer_audio_kv(layer: nn.Module, audio: torch.Tensor, cos_sin: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One audio layer's keys/values from its projected audio A_l, with the layer's own norm and k/v projections.

    layer: the decoder layer (used, never modified); audio: A_l [B, N_a, d]; cos_sin: the RoPE tables of the audio
    positions ([B, N_a, D_h] each) or None for unrotated keys. → keys, values [B, H_kv, N_a, D_h].
    """
    attn = layer.self_attn
    batch, num_audio, _ = audio.shape
    normed = layer.input_layernorm(audio)
    k = attn.k_proj(normed).view(batch, num_audio, -1, attn.head_dim).transpose(1, 2)  # [B, H_kv, N_a, D_h]
    v = attn.v_proj(normed).view(batch, num_audio, -1, attn.head_dim).transpose(1, 2)
    if cos_sin is not None:
        cos, sin = (t.unsqueeze(1) for t in cos_sin)  # [B, 1, N_a, D_h]
        k = k * cos + rotate_half(k) * sin  # the LLM's RoPE (Llama's apply_rotary_pos_emb, keys only)
    # Contiguous once here: a decoding step's matmuls would otherwise copy the transposed layout at every token.
    return k.contiguous(), v.contiguous()


def audio_rope(llm: nn.Module, like: torch.Tensor, mask: torch.Tensor, rope: str) -> tuple | None:
    """The RoPE tables (cos, sin), each [B, N_a, D_h], of the "prefix" audio positions; None for rope="none"."""
    if rope != "prefix":
        return None
    return llm.model.rotary_emb(like, prefix_audio_positions(mask))


# ----------------------------------------------------------------------------------------------------------------------
# The attention backends: prepend audio K/V, widen the mask, then run Hugging Face's own sdpa / eager
# ----------------------------------------------------------------------------------------------------------------------


def _causal_mask(q_len: int, text_keys: int, device) -> torch.Tensor:
    """[1, 1, T, S] bool: the last T of S text positions query, each sees the keys up to its own position."""
    return torch.ones(q_len, text_keys, dtype=torch.bool, device=device).tril(text_keys - q_len)[None, None]


def _widen_mask(
    attention_mask: torch.Tensor | None, audio_mask: torch.Tensor, query: torch.Tensor, text_keys: int,
    audio_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask [B|1, 1, T, S_text] (bool: True = attend, or additive float) → [B, 1, T, N_a + S_text].

    Every text query sees every real audio key; the text part is the LLM's own (causal, padding) mask. With
    `audio_bias` [B], the audio part is additive: that offset where the key is real, blocked elsewhere.
    `None` means the backend would have run plain causal attention, which we spell out here.
    """
    batch, _, q_len, _ = query.shape
    if attention_mask is None:
        attention_mask = _causal_mask(q_len, text_keys, query.device)
    if audio_bias is not None and attention_mask.dtype == torch.bool:
        attention_mask = additive_mask(attention_mask.to(query.device), query.dtype)
    audio_part = audio_mask[:, None, None, :].expand(batch, 1, q_len, audio_mask.shape[-1])
    if attention_mask.dtype != torch.bool:
        real = 0.0
        if audio_bias is not None:
            real = audio_bias.to(device=query.device, dtype=attention_mask.dtype)[:, None, None, None]
        audio_part = additive_mask(audio_part.to(query.device), attention_mask.dtype, real)
    text_part = attention_mask.expand(batch, 1, q_len, attention_mask.shape[-1])
    return torch.cat([audio_part, text_part], dim=-1)


def _decoding_attention(query, key, value, attention_mask, scaling, audio_k, audio_v, lal_audio):
    """A decoding step's attention over [audio ; text] that reads the audio keys/values where prefill wrote them.

    query [B, H, T, D_h] (T new tokens), key/value [B, H_kv, S, D_h] (the text cache, S > T), audio_k/audio_v
    [B, H_kv, N_a, D_h] → [B, T, H, D_h].
    Concatenating keys (what the prefill path does) would copy every audio key and value at every new token; here
    only the scores are joined, [B, H, T, N_a + S], which for T = 1 is D_h times smaller. One softmax, as before.
    Grouped-query heads are folded into the query axis so the shared keys are read, never repeated; so are the text
    rows that share one row of audio keys (`AudioKV.rows_per_audio`).
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads, text_keys = key.shape[1], key.shape[2]
    scale = head_dim**-0.5 if scaling is None else scaling
    grouped = (query * scale).reshape(batch, kv_heads, heads // kv_heads * q_len, head_dim)  # head h → kv head h // G
    audio_add, text_add = _decoding_masks(lal_audio, attention_mask, q_len, text_keys, query.device)
    rows = lal_audio.rows_per_audio
    audio_scores = _shared_rows_matmul(grouped, audio_k.transpose(-1, -2), rows).float() + audio_add  # [B,H_kv,G·T,N_a]
    text_scores = (grouped @ key.transpose(-1, -2)).float().view(batch, kv_heads, -1, q_len, text_keys)
    text_scores = (text_scores + text_add[:, :, None]).flatten(2, 3)  # [B, H_kv, G·T, S]
    probs = torch.cat([audio_scores, text_scores], dim=-1).softmax(-1).to(value.dtype)
    num_audio = audio_k.shape[2]
    out = _shared_rows_matmul(probs[..., :num_audio], audio_v, rows) + probs[..., num_audio:] @ value  # [B,H_kv,G·T,D_h]
    return out.reshape(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()


def _shared_rows_matmul(x: torch.Tensor, y: torch.Tensor, rows: int) -> torch.Tensor:
    """x [B, H, M, K] @ y [B / rows, H, K, N], where `rows` consecutive rows of x share one row of y → [B, H, M, N].
    The sharing rows are folded into the M axis, so each row of y is read once for all of them."""
    if rows == 1:
        return x @ y
    batch, heads, m, k = x.shape
    folded = x.reshape(batch // rows, rows, heads, m, k).transpose(1, 2).reshape(batch // rows, heads, rows * m, k)
    out = folded @ y  # [B / rows, H, rows·M, N]
    return out.view(batch // rows, heads, rows, m, -1).transpose(1, 2).reshape(batch, heads, m, -1)


def _decoding_masks(lal_audio: AudioKV, attention_mask, q_len: int, text_keys: int, device):
    """The additive fp32 masks of a decoding step, built once per step and shared by every audio layer: audio
    [B, 1, 1, N_a] (the bias on real keys, blocked padding) and text [B|1, 1, T, S] (the LLM's mask; None means
    causal over the cached keys)."""

    def build():
        bias = 0.0 if lal_audio.bias is None else lal_audio.bias.float().to(device)[:, None]
        audio_add = additive_mask(lal_audio.mask.to(device), torch.float32, bias)[:, None, None, :]
        text_mask = _causal_mask(q_len, text_keys, device) if attention_mask is None else attention_mask
        if text_mask.dtype == torch.bool:
            text_add = additive_mask(text_mask, torch.float32)
        else:
            text_add = text_mask.float().clamp(min=torch.finfo(torch.float32).min)
        return audio_add, text_add

    return lal_audio.once_per_call("_decoding_masks", attention_mask, (q_len, text_keys), build)


def _lal_attention(base_attention):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, lal_audio=None, **kwargs):
        """query [B, H, T, D_h], key/value [B, H_kv, S, D_h]; audio K/V of this layer, if any, go in front."""
        if lal_audio is None or module.layer_idx not in lal_audio.keys:
            return base_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        if key.shape[2] > query.shape[2] and dropout == 0.0:  # a decoding step: text keys are cached before it
            audio_k, audio_v = lal_audio.keys[module.layer_idx], lal_audio.values[module.layer_idx]
            out = _decoding_attention(query, key, value, attention_mask, scaling, audio_k.to(query.dtype),
                                      audio_v.to(value.dtype), lal_audio)
            return out, None
        audio_k, audio_v = lal_audio.layer_rows(module.layer_idx)
        groups = query.shape[1] // key.shape[1] if base_attention is sdpa_attention_forward else 1
        mask = _shared_mask(lal_audio, attention_mask, query, key.shape[2], groups)
        key = torch.cat([audio_k.to(key.dtype), key], dim=2)  # [B, H_kv, N_a + S, D_h]
        value = torch.cat([audio_v.to(value.dtype), value], dim=2)
        if groups == 1:
            return base_attention(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)
        return _grouped_sdpa(query, key, value, mask, scaling, dropout), None

    return attention


def _shared_mask(lal_audio: AudioKV, attention_mask, query: torch.Tensor, text_keys: int, groups: int):
    """`_widen_mask`, built once per forward and shared by every audio layer (the layers get the same text mask and
    the same audio): one [B, 1, G·T, N_a + S] tensor instead of one per layer, in memory and in the saved
    activations. With `groups` G > 1 its rows are repeated for `_grouped_sdpa`'s folded query heads."""

    def build():
        mask = _widen_mask(attention_mask, lal_audio.mask, query, text_keys, lal_audio.bias)
        return mask.repeat(1, 1, groups, 1) if groups > 1 else mask

    return lal_audio.once_per_call("_shared_mask", attention_mask, (tuple(query.shape), text_keys, groups), build)


def _grouped_sdpa(query, key, value, mask, scaling, dropout) -> torch.Tensor:
    """SDPA over grouped-query heads without repeating the keys: query [B, H, T, D_h] is folded to
    [B, H_kv, G·T, D_h] (query head h reads kv head h // G), so key/value [B, H_kv, S, D_h] are read as they are and
    saved for backward once, not G times. mask: [B, 1, G·T, S]. → [B, T, H, D_h]."""
    batch, heads, q_len, head_dim = query.shape
    folded = query.reshape(batch, key.shape[1], heads // key.shape[1] * q_len, head_dim)
    out = nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=dropout,
                                                     scale=scaling)
    return out.view(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()


_lal_sdpa = _lal_attention(sdpa_attention_forward)


def _varlen_can_run(query: torch.Tensor, key: torch.Tensor, dropout: float, window: int | None,
                    custom_mask: bool = False) -> bool:
    """Whether FlashAttention-2 can take this call: see `_lal_flash`."""
    decoding = key.shape[2] > query.shape[2] and dropout == 0.0
    return (flash_kernel_runs(query) and not decoding and not custom_mask
            and (window is None or key.shape[2] <= window))


def _lal_flash(module, query, key, value, attention_mask, scaling=None, dropout=0.0, lal_audio=None, **kwargs):
    """The "flash" backend: FlashAttention-2's varlen kernel with audio keys packed in front of each example's text
    keys (lal_varlen.py) where it can run: CUDA, fp16/bf16, flash_attn >= 2.1, no sliding window in reach, and not a
    decoding step (which reads the audio in place, `_decoding_attention`, rather than packing it again), and not a
    custom mask (packed questions: the varlen kernel knows causal and padding only). Anything else
    takes the SDPA path, which on CUDA runs PyTorch's memory-efficient kernel (the one that accepts our mask)."""
    if _varlen_can_run(query, key, dropout, kwargs.get("sliding_window"), kwargs.get("lal_custom_mask", False)):
        if lal_audio is not None and module.layer_idx in lal_audio.keys:
            lal_audio = lal_audio.only_layer(module.layer_idx)  # the packing reads one row of keys per example
        return lal_flash_varlen_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                          lal_audio=lal_audio, **kwargs)
    return _lal_sdpa(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, lal_audio=lal_audio,
                     **kwargs)


LAL_BACKENDS = {"sdpa": "lal_sdpa", "eager": "lal_eager", "flash": "lal_flash"}
AttentionInterface.register("lal_sdpa", _lal_sdpa)
AttentionInterface.register("lal_eager", _lal_attention(eager_attention_forward))
AttentionInterface.register("lal_flash", _lal_flash)
AttentionMaskInterface.register("lal_sdpa", sdpa_mask)
AttentionMaskInterface.register("lal_eager", eager_mask)
AttentionMaskInterface.register("lal_flash", sdpa_mask)  # 4-D: the varlen path reads padding from it, SDPA needs it


def default_lal_backend() -> str:
    """"flash" where FlashAttention-2 can run (a CUDA device and flash_attn >= 2.1), "sdpa" elsewhere."""
    return "flash" if flash_attn_available() else "sdpa"


def enable_lal_attention(llm: nn.Module, backend: str | None = None) -> None:
    """Switch the LLM to the LAL-aware version of its attention backend ("sdpa", "eager" or "flash").

    With no `backend`, an LLM built for eager attention keeps eager; otherwise `default_lal_backend()`. Without
    `lal_audio` in the forward kwargs, the LAL backends compute exactly the plain ones.
    """
    current = llm.config._attn_implementation or "eager"
    if backend is None:
        backend = {v: k for k, v in LAL_BACKENDS.items()}.get(current, current)
        if backend in ("sdpa", "flash_attention_2"):
            backend = default_lal_backend()
    if backend not in LAL_BACKENDS:
        raise ValueError(
            f"attention backend {backend!r} cannot carry LAL audio keys; choose one of {sorted(LAL_BACKENDS)}."
        )
    llm.config._attn_implementation = LAL_BACKENDS[backend]


# ----------------------------------------------------------------------------------------------------------------------
# The LAL connector: every LAL-routed encoder's P_l, concatenated along the token axis
# ----------------------------------------------------------------------------------------------------------------------


class ClipTags(nn.Module):
    """t_2 .. t_max_clips ("Several clips"), drawn as the LLM draws its embeddings; t_1 = 0 is not a parameter.
    A module of its own (not a bare parameter of the connector), so that ZeRO-3 gathers it for the backward pass
    through its tensor output."""

    def __init__(self, max_clips: int, hidden_size: int, std: float):
        super().__init__()
        self.max_clips = max_clips
        # Drawn from a generator of its own (seeded from the run's seed), so that adding the tags left every other
        # parameter's initialisation, and a run of an earlier version, as they were.
        draw = torch.Generator().manual_seed((torch.initial_seed() + 7919) % 2**63)
        self.weight = nn.Parameter(torch.randn(max_clips - 1, hidden_size, generator=draw) * std)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """Each audio token's clip index [B, N_a] (0 = a question's first clip) → its tag [B, N_a, d]; exact zeros
        for the first clip."""
        if clip.numel() and int(clip.max()) >= self.max_clips:
            raise ValueError(f"a question holds {int(clip.max()) + 1} clips; this model takes at most "
                             f"{self.max_clips} (lal_config.max_clips).")
        table = torch.cat([self.weight.new_zeros(1, self.weight.shape[1]), self.weight])
        return table[clip]


class LALConnector(nn.Module):
    """Per-encoder per-layer projections P_l; produces the audio K/V for every audio layer.

    Several LAL encoders (e.g. SSLAM and CLAP) share one audio key sequence per layer: their tokens are concatenated.
    With `recompute` (the default), training keeps only each layer's audio keys/values (which attention needs) and
    recomputes P_l, the norm and the projections in the backward pass: at N_a = 512 on SmolLM2 they are most of
    LAL's activation memory, and they cost a small fraction of the step to compute again (`pal bench efficiency`).
    """

    route = "lal"  # its encoders' route, its attribute on the model and its trainable group (trainable.py)
    cache_key = "lal_audio"  # what the decoder layers receive its keys/values as, and where PALCache keeps them
    shares_rows = True  # several prompts about one clip read one row of keys/values (`AudioKV.shared_repeat`)

    def __init__(self, config: LALConfig, text_config, encoder_dims: dict[str, int]):
        """`config`: its sub-config; `text_config`: the LLM's (width, depth); `encoder_dims`: `{name: D_e}` of the
        encoders it carries, in order."""
        super().__init__()
        self.layers = config.layer_indices(text_config.num_hidden_layers)
        self.rope, self.audio_bias, self.audio_offset = config.rope, config.audio_bias, config.audio_offset
        self.recompute = config.recompute_audio
        self.projections = nn.ModuleDict({
            name: LALProjection(dim, text_config.hidden_size, self.layers, config.projection, config.projection_rank)
            for name, dim in encoder_dims.items()
        })
        self.clip_tags = ClipTags(config.max_clips, text_config.hidden_size,
                                  getattr(text_config, "initializer_range", 0.02))

    def _layer_kv(self, decoder_layer: nn.Module, layer: str, cos_sin, tags: torch.Tensor, *shared: torch.Tensor):
        """A_l = [P_l of each encoder] concatenated along tokens, plus each token's clip tag, then that layer's
        keys/values."""
        projected = torch.cat([p.heads[layer](x) for p, x in zip(self.projections.values(), shared)], dim=1)
        return layer_audio_kv(decoder_layer, projected + tags.to(projected.dtype), cos_sin)

    def forward(self, audio: dict[str, tuple[torch.Tensor, torch.Tensor]], llm: nn.Module,
                clips: dict[str, torch.Tensor] | None = None) -> AudioKV:
        """audio {name: (tokens [B, N_e, D_e], mask [B, N_e])}, clips {name: [B, N_e] each token's clip index within
        its question, pal/clips.py; None: one clip} → audio K/V [B, H_kv, N_a, D_h] for every audio layer."""
        shared = [projection.trunk(audio[name][0]) for name, projection in self.projections.items()]
        mask = torch.cat([audio[name][1] for name in self.projections], dim=1)  # [B, N_a]
        clip = (torch.cat([clips[name] for name in self.projections], dim=1) if clips is not None
                else torch.zeros(mask.shape, dtype=torch.long, device=mask.device))
        tags = self.clip_tags(clip.to(shared[0].device))
        cos_sin = audio_rope(llm, shared[0], mask, self.rope)
        keys, values = {}, {}
        for layer in self.layers:
            run = functools.partial(self._layer_kv, llm.model.layers[layer], str(layer), cos_sin, tags)
            if self.recompute and self.training and torch.is_grad_enabled():
                keys[layer], values[layer] = checkpoint(run, *shared, use_reentrant=False)
            else:
                keys[layer], values[layer] = run(*shared)
        bias = -mask.sum(-1).clamp(min=1).float().log() if self.audio_bias == "log_count" else None  # [B]
        if self.audio_offset:
            bias = (0 if bias is None else bias) - torch.full(mask.shape[:1], self.audio_offset, device=mask.device)
        return AudioKV(keys, values, mask, bias)
