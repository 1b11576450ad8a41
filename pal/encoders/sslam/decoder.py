"""The lightweight CNN decoder of pre-training (docs/design.md#decoder): `modality_encoders.IMAGE.decoder` in
checkpoints.

Input: the student's patch outputs at visible positions and N(0, σ²) noise tokens at masked positions, in patch order
[B, N, D]. Reshaped to the patch grid [B, D, T_p, F_p], then per layer: grouped 3×3 conv → LayerNorm over channels
(no affine, eps 1e-5) → GELU, plus the layer's input (residual). Finally a Linear back to [B, N, D].
"""

from __future__ import annotations

import torch
from torch import nn

from .model import SSLAMConfig


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B, C, H, W], without affine parameters (so no checkpoint keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x.transpose(1, -1), (x.shape[1],), eps=1e-5).transpose(1, -1)


class Decoder2d(nn.Module):
    def __init__(self, config: SSLAMConfig):
        super().__init__()
        dim, kernel = config.embed_dim, config.decoder_kernel
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=config.decoder_groups),
                ChannelLayerNorm(),
                nn.GELU(),
            )
            for _ in range(config.decoder_layers)
        )
        self.proj = nn.Linear(dim, dim)
        self.freq_patches = config.freq_patches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, D] in patch order (n = F_p·t + f) → predictions [B, N, D]."""
        batch, num, dim = x.shape
        x = x.view(batch, num // self.freq_patches, self.freq_patches, dim).permute(0, 3, 1, 2)  # [B, D, T_p, F_p]
        for block in self.blocks:
            x = x + block(x)
        x = x.permute(0, 2, 3, 1).reshape(batch, num, dim)
        return self.proj(x)
