"""The SSLAM / EAT audio ViT (docs/design.md#encoder), with the released checkpoints' parameter names.

Module names are a contract with the released fairseq weights (`modality_encoders.IMAGE.local_encoder.proj.weight`,
`blocks.N.attn.qkv.weight`, ...), so a released state dict loads with no renaming (see `checkpoint.py`).

Forward (docs/design.md#encoder):
    x = PatchEmbed(spec) + pos[:, :N]          conv 16×16 / 16 over (time, freq); tokens time-major, n = F·t + f
    x = [CLS ; x]                              the CLS token carries no position
    x = LayerNorm_ctx(x)                       applied once, before block 0
    per block (post-LN):  x = x + Attn(x);  r = LN1(x);  h = MLP(r);  x = LN2(r + h);  tap_l = h
There is no final norm. `tap_l` (the FFN output before residual and LN2) is what pre-training regresses.

Notation: B batch, T spectrogram frames, F mel bins, N patches, D width, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class SSLAMConfig:
    """Sizes of the encoder; ViT-B (the released model) by default."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    num_mel_bins: int = 128
    max_time_patches: int = 768  # positional table rows = max_time_patches · (num_mel_bins / patch_size)
    norm_eps: float = 1e-6
    # Decoder (pre-training only): 6 grouped 3×3 convs (docs/design.md#decoder)
    decoder_layers: int = 6
    decoder_kernel: int = 3
    decoder_groups: int = 16

    @property
    def freq_patches(self) -> int:
        return self.num_mel_bins // self.patch_size

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}.")
        if self.num_mel_bins % self.patch_size:
            raise ValueError(f"num_mel_bins {self.num_mel_bins} is not a multiple of patch_size {self.patch_size}.")


PRESETS = {
    "vitb": SSLAMConfig(),
    "small": SSLAMConfig(embed_dim=384, depth=12, num_heads=6, mlp_dim=1536),
    # head dimension 64 everywhere, so `checkpoint.infer_config` recovers the heads from the width
    "tiny": SSLAMConfig(embed_dim=128, depth=2, num_heads=2, mlp_dim=256, max_time_patches=64, decoder_layers=2),
}


def sincos_2d_positions(dim: int, time_patches: int, freq_patches: int) -> torch.Tensor:
    """The fixed 2-D sin-cos table [1, T_p·F_p, D] (docs/design.md#encoder), frequency in the first half (MAE's
    meshgrid).

    For token n = F_p·t + f, with w_k = 10000^(-k / (D/4)): [sin(f·w), cos(f·w), sin(t·w), cos(t·w)].
    Released checkpoints carry their own (float16-rounded) table; load it rather than recompute it.
    """
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    t, f = np.meshgrid(np.arange(time_patches), np.arange(freq_patches), indexing="ij")  # [T_p, F_p]
    f_angle = f.reshape(-1, 1) * omega[None, :]
    t_angle = t.reshape(-1, 1) * omega[None, :]
    table = np.concatenate([np.sin(f_angle), np.cos(f_angle), np.sin(t_angle), np.cos(t_angle)], axis=1)
    return torch.from_numpy(table.astype(np.float32)).unsqueeze(0)


class PatchEmbed(nn.Module):
    def __init__(self, config: SSLAMConfig):
        super().__init__()
        self.proj = nn.Conv2d(1, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec [B, 1, T, F] → patches [B, N, D], time-major (n = F_p·t + f)."""
        return self.proj(spec).flatten(2).transpose(1, 2)


class FixedPositions(nn.Module):
    def __init__(self, config: SSLAMConfig):
        super().__init__()
        table = sincos_2d_positions(config.embed_dim, config.max_time_patches, config.freq_patches)
        self.positions = nn.Parameter(table, requires_grad=False)


class ContextEncoder(nn.Module):
    def __init__(self, config: SSLAMConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)


class ImageEncoder(nn.Module):
    """fairseq's `modality_encoders.IMAGE`: patch embedding, positions, CLS token and the context norm."""

    def __init__(self, config: SSLAMConfig):
        super().__init__()
        self.local_encoder = PatchEmbed(config)
        self.fixed_positional_encoder = FixedPositions(config)
        self.context_encoder = ContextEncoder(config)
        self.extra_tokens = nn.Parameter(torch.randn(1, 1, config.embed_dim))


class Attention(nn.Module):
    def __init__(self, config: SSLAMConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)  # rows [W_q; W_k; W_v]
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, num, dim = x.shape
        qkv = self.qkv(x).view(batch, num, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each [B, H, N, D/H]
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # scale (D/H)^-0.5
        return self.proj(out.transpose(1, 2).reshape(batch, num, dim))


class Mlp(nn.Module):
    def __init__(self, config: SSLAMConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_dim)
        self.act = nn.GELU()  # exact (erf) GELU; the tanh form changes features by ~1e-3 (fixture README)
        self.fc2 = nn.Linear(config.mlp_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Post-LN transformer block (fairseq `AltBlock` with layer_norm_first=False)."""

    def __init__(self, config: SSLAMConfig):
        super().__init__()
        self.attn = Attention(config)
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.mlp = Mlp(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, D] → (block output [B, N, D], FFN tap [B, N, D])."""
        x = x + self.attn(x)
        r = self.norm1(x)
        h = self.mlp(r)
        return self.norm2(r + h), h


@dataclass
class SSLAMOutput:
    last_hidden_state: torch.Tensor  # [B, 1 + N, D]: CLS, then patches time-major
    hidden_states: list[torch.Tensor]  # [context-norm output, block 1 output, ...], each [B, 1 + N, D]
    layer_results: list[torch.Tensor]  # FFN taps of every block, each [B, 1 + N, D]


class SSLAMEncoder(nn.Module):
    """The encoder. Pre-training attaches its decoder at `image.decoder` (the released key names; pretraining.py)."""

    def __init__(self, config: SSLAMConfig | None = None):
        super().__init__()
        self.config = config or SSLAMConfig()
        self.modality_encoders = nn.ModuleDict({"IMAGE": ImageEncoder(self.config)})
        self.blocks = nn.ModuleList(Block(self.config) for _ in range(self.config.depth))

    @property
    def image(self) -> ImageEncoder:
        return self.modality_encoders["IMAGE"]

    def embed(self, spec: torch.Tensor) -> torch.Tensor:
        """spec [B, T, F] or [B, 1, T, F] → patches with positions [B, N, D] (no CLS yet)."""
        if spec.dim() == 3:
            spec = spec.unsqueeze(1)
        x = self.image.local_encoder(spec)
        table = self.image.fixed_positional_encoder.positions
        if x.shape[1] > table.shape[1]:
            raise ValueError(
                f"{x.shape[1] // self.config.freq_patches} time patches exceed the positional table's "
                f"{self.config.max_time_patches}: split long audio into windows."
            )
        return x + table[:, : x.shape[1]]

    def contextualize(self, x: torch.Tensor) -> torch.Tensor:
        """Patches with positions [B, N', D] → [CLS ; patches] after the context norm [B, 1 + N', D]."""
        cls = self.image.extra_tokens.expand(x.shape[0], -1, -1)
        return self.image.context_encoder.norm(torch.cat([cls, x], dim=1))

    def run_blocks(self, x: torch.Tensor) -> SSLAMOutput:
        """Context-normed tokens [B, 1 + N', D] through every block."""
        hidden, taps = [x], []
        for block in self.blocks:
            x, tap = block(x)
            hidden.append(x)
            taps.append(tap)
        return SSLAMOutput(x, hidden, taps)

    def encode_tokens(self, x: torch.Tensor) -> SSLAMOutput:
        """Patches with positions [B, N', D] (all, or only the visible ones) → CLS, context norm, blocks."""
        return self.run_blocks(self.contextualize(x))

    def forward(self, spec: torch.Tensor) -> SSLAMOutput:
        """spec: normalised log-mel [B, T, F] (T a multiple of 16) → SSLAMOutput with [B, 1 + T/16·F/16, D]."""
        return self.encode_tokens(self.embed(spec))


def pool_tokens(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, 1 + N, D] → "cls": [B, D]; "mean": mean of the patch tokens [B, D]; "none": unchanged."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "mean":
        return tokens[:, 1:].mean(1)
    if pool == "none":
        return tokens
    raise ValueError(f"pool = {pool!r}: expected 'cls', 'mean' or 'none'.")
