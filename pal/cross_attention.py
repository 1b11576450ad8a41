"""The cross-attention baseline (Flamingo / mllama style): new gated blocks in front of chosen LLM layers.

Before each chosen decoder layer l the text hidden states x [B, T, d] pass a block of its own (Alayrac et al. 2022,
"Flamingo", §2.2 and Fig. 4):
    y = x + tanh(α_attn) · o(softmax(q(LN(x)) · k(A)ᵀ / √D_h + mask) · v(A))
    z = y + tanh(α_ffn)  · FFN(LN(y))
A [B, N_a, d] is the audio projected to the LLM width (one linear map per encoder, tokens concatenated), the same for
every block; each block has its own q/k/v/o, LayerNorms and FFN. The gates α start at 0, so a fresh model is exactly
the bare LLM. Text queries see every real audio token and nothing else (no causal mask: audio has no position in the
text); an example without audio gets no update. Unlike LAL, audio enters the residual stream and passes an FFN, and
the blocks are new weights: the comparison PAL's reviewers asked for.

Mechanics: a forward pre-hook on each chosen decoder layer applies its block; the blocks' audio keys/values arrive
through the decoder's `**kwargs` (`xattn_audio`), computed once per forward, or once at prefill when generating
(kept in the PALCache). Nothing of the LLM is renamed: its checkpoint keys stay its own.

Notation: B batch, T text length, N_a audio tokens, D_e encoder width, d LLM hidden size, H heads, D_h = d / H.
"""

from __future__ import annotations

import torch
from torch import nn

from .audio_cache import AudioKV
from .configuration_pal import XAttnConfig


class GatedCrossAttentionBlock(nn.Module):
    """One gated cross-attention block: text [B, T, d] attends to audio keys/values; tanh gates start at zero."""

    def __init__(self, hidden_size: int, heads: int, ffn_mult: int = 4):
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"xattn_config.heads = {heads} does not divide the LLM's hidden size {hidden_size}.")
        self.heads, self.head_dim = heads, hidden_size // heads
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, ffn_mult * hidden_size, bias=False), nn.GELU(),
                                 nn.Linear(ffn_mult * hidden_size, hidden_size, bias=False))
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def audio_kv(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, N_a, d] → this block's keys and values, each [B, H, N_a, D_h]."""
        batch, num = audio.shape[:2]

        def split(t):
            return t.view(batch, num, self.heads, self.head_dim).transpose(1, 2)

        return split(self.k_proj(audio)), split(self.v_proj(audio))

    def forward(self, hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, d], keys/values [B, H, N_a, D_h], mask [B, N_a] (True = real) → [B, T, d]."""
        batch, length, width = hidden.shape
        query = self.q_proj(self.attn_norm(hidden)).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        has_audio = mask.any(-1)  # [B]; a row without audio would softmax over nothing: it gets no update instead
        visible = (mask | ~has_audio[:, None])[:, None, None, :]  # [B, 1, 1, N_a]
        attended = nn.functional.scaled_dot_product_attention(query, keys.to(query.dtype), values.to(query.dtype),
                                                              attn_mask=visible)
        attended = attended.transpose(1, 2).reshape(batch, length, width) * has_audio[:, None, None]
        hidden = hidden + torch.tanh(self.attn_gate) * self.o_proj(attended)
        return hidden + torch.tanh(self.ffn_gate) * self.ffn(self.ffn_norm(hidden))


class CrossAttentionConnector(nn.Module):
    """Per-encoder projections to the LLM width and one gated block per chosen layer; installs itself as hooks."""

    route = "xattn"  # its encoders' route, its attribute on the model and its trainable group (trainable.py)
    cache_key = "xattn_audio"  # what the decoder layers receive its keys/values as, and where PALCache keeps them
    shares_rows = False  # each text row's block reads its own row of keys/values

    def __init__(self, config: XAttnConfig, text_config, encoder_dims: dict[str, int]):
        """`config`: its sub-config; `text_config`: the LLM's (width, depth, heads); `encoder_dims`: `{name: D_e}` of
        the encoders it carries, in order."""
        super().__init__()
        self.layers = config.layer_indices(text_config.num_hidden_layers)
        hidden = text_config.hidden_size
        heads = config.heads or text_config.num_attention_heads
        self.projections = nn.ModuleDict({name: nn.Linear(dim, hidden) for name, dim in encoder_dims.items()})
        self.blocks = nn.ModuleDict({str(l): GatedCrossAttentionBlock(hidden, heads, config.ffn_mult)
                                     for l in self.layers})

    def forward(self, audio: dict[str, tuple[torch.Tensor, torch.Tensor]], llm: nn.Module | None = None,
                clips: dict[str, torch.Tensor] | None = None) -> AudioKV:
        """audio {name: (tokens [B, N_e, D_e], mask [B, N_e])} → every block's keys/values over the concatenated
        projected tokens ([B, H, N_a, D_h] per layer) and their mask [B, N_a]. `llm` is not needed (the blocks have
        their own projections); it is taken so that every side connector is called the same way. `clips`: each
        token's clip index (pal/clips.py); this baseline takes one clip per question, as Flamingo-style blocks
        without clip markers would blur several."""
        if clips is not None and any(bool((c > 0).any()) for c in clips.values()):
            raise ValueError("the gated cross-attention baseline takes one clip per question; route the encoders "
                             "through LAL or PLITS to ask about several clips at once.")
        projected = torch.cat([proj(audio[name][0]) for name, proj in self.projections.items()], dim=1)
        mask = torch.cat([audio[name][1] for name in self.projections], dim=1)
        keys, values = {}, {}
        for layer in self.layers:
            keys[layer], values[layer] = self.blocks[str(layer)].audio_kv(projected)
        return AudioKV(keys, values, mask)

    def install(self, llm: nn.Module) -> None:
        """Run block l in front of decoder layer l whenever the layer is called with `xattn_audio`."""
        for layer in self.layers:
            llm.model.layers[layer].register_forward_pre_hook(self._hook(layer), with_kwargs=True)

    def _hook(self, layer: int):
        def apply_block(_module, args, kwargs):
            audio = kwargs.get("xattn_audio")
            if audio is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            hidden = self.blocks[str(layer)](hidden, audio.keys[layer], audio.values[layer], audio.mask)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return apply_block
