"""Projectors that map encoder tokens into the LLM's embedding width, for PLITS and PAL summary tokens.

- `MLPProjector`: LLaVA-1.5 / Pengi style Linear-GELU-Linear, optionally concatenating k consecutive tokens first
  (token downsampling, as Qwen2-Audio and SALMONN shorten their audio sequences).
- `QFormerProjector`: a fixed number of learnable latent queries cross-attend to the encoder tokens (the
  latent-token connector of PAL's v1 baseline, docs/design.md#plits; Perceiver / Q-Former family), then a linear map
  to d.

Both take padded tokens plus a mask and return tokens plus a mask; padding never leaks into real outputs, so a padded
batch gives what each example gives alone.

Notation: B batch, N_e encoder tokens, D_e encoder width, d LLM hidden size, Q latent queries.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Module):
    def __init__(self, encoder_dim: int, hidden_size: int, downsample: int = 1):
        super().__init__()
        self.downsample = downsample
        self.net = nn.Sequential(
            nn.Linear(encoder_dim * downsample, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, N_e, D_e], mask [B, N_e] (real tokens first) → ([B, ceil(N_e/k), d], mask [B, ceil(N_e/k)])."""
        batch, num, dim = tokens.shape
        k = self.downsample
        if k > 1:
            pad = (-num) % k
            tokens = nn.functional.pad(tokens, (0, 0, 0, pad))  # zero tokens complete the last group
            tokens = tokens.reshape(batch, (num + pad) // k, k * dim)  # [B, N_e/k, k·D_e]
        lengths = (mask.sum(-1) + k - 1) // k  # a group is real if it holds any real token
        out_mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        return self.net(tokens), out_mask


class CrossAttention(nn.Module):
    """Multi-head attention from latent queries to encoder tokens; padded tokens are masked out."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latents [B, Q, D], tokens [B, N_e, D], mask [B, N_e] → [B, Q, D]."""
        def heads(x):  # [B, L, D] → [B, H, L, D/H]
            return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(
            heads(self.q_proj(latents)), heads(self.k_proj(tokens)), heads(self.v_proj(tokens)),
            attn_mask=mask[:, None, None, :],
        )
        return self.o_proj(out.transpose(1, 2).reshape(latents.shape))


class QFormerBlock(nn.Module):
    """Pre-norm cross-attention from latents to encoder tokens, then a GELU MLP, both residual."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_tokens = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """latents [B, Q, D], tokens [B, N_e, D], mask [B, N_e] → latents [B, Q, D]."""
        latents = latents + self.cross_attn(self.norm_latents(latents), self.norm_tokens(tokens), mask)
        return latents + self.mlp(self.norm_mlp(latents))


class QFormerProjector(nn.Module):
    def __init__(self, encoder_dim: int, hidden_size: int, num_latents: int, num_layers: int, num_heads: int,
                 dim: int | None = None):
        super().__init__()
        dim = dim or hidden_size
        if dim % num_heads:
            raise ValueError(f"plits_config.qformer_dim {dim} is not divisible by plits_config.qformer_heads "
                             f"{num_heads}.")
        self.num_latents = num_latents
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.input_proj = nn.Linear(encoder_dim, dim)
        self.blocks = nn.ModuleList(QFormerBlock(dim, num_heads) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(dim)
        self.output_proj = nn.Linear(dim, hidden_size)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, N_e, D_e], mask [B, N_e] → (latent tokens [B, Q, d], mask [B, Q]).

        A row without audio (text-only example) yields no real latent; its keys are unmasked only to keep the
        softmax finite, and its outputs are masked out.
        """
        has_audio = mask.any(-1)  # [B]
        safe_mask = mask | ~has_audio[:, None]
        x = self.input_proj(tokens)
        latents = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(latents, x, safe_mask)
        out = self.output_proj(self.norm_out(latents))
        return out, has_audio[:, None].expand(-1, out.shape[1])
