"""Frozen encoder outputs standardised with training-set statistics, before any connector sees them.

Why: a frozen encoder's output is mostly the same for every clip. Positional embeddings, biases and the norms' affine
terms put a per-position constant into every token; what tells one clip from another is a small remainder. Measured:
on the tests' tiny SSLAM the part that varies between clips is 0.5% of the tokens' energy, and a PAL model trained on
it for 60 steps answered identically with any clip's audio (reliance gap 1e-7 nats), while the same run on
standardised features heard the tones (gap 0.12 [0.06, 0.19]). A connector initialised at random mostly passes the
constant on, and LAL's keys then hardly differ between clips.

The transform, per encoder, for token n of a clip (c indexes channels):
    x̂[n, c] = (x[n, c] - μ[n, c]) / σ[c]
μ[n]: the mean over training clips of the token at position n (positions past those fitted use the mean over
positions); σ[c]: the per-channel standard deviation of x - μ over the real training tokens at fitted positions.
Padding stays zero. A recording longer than an encoder's window comes as windows joined in time order, each starting
the encoder's positions again: with the encoder's tokens per window W (`periods`), token n takes position n mod W, so
every window is standardised as a clip of one window is (a 10-minute recording as its ten-second clips).
The statistics are buffers, saved with the model, fitted once by the curriculum at the start of its first stage
(`fit`); until fitted the transform is the identity. `PALConfig.audio_norm = "standardize"` turns it on.

Notation: B batch, N tokens, D channels, P fitted positions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# A position seen in fewer training clips than this takes the mean over positions instead of its own noisy mean.
MIN_CLIPS_PER_POSITION = 4


class _EncoderStats(nn.Module):
    def __init__(self, positions: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(positions, dim))  # μ [P, D]
        self.register_buffer("fallback", torch.zeros(dim))  # μ for positions ≥ P: the mean over positions [D]
        self.register_buffer("scale", torch.ones(dim))  # σ [D]


class AudioFeatureNorm(nn.Module):
    """{name: (tokens [B, N, D], mask [B, N])} → the same with tokens standardised (see the module docstring)."""

    def __init__(self, encoder_dims: dict[str, int], positions: dict[str, int] | None = None,
                 periods: dict[str, int] | None = None):
        super().__init__()
        positions = positions or {}
        self.periods = dict(periods or {})  # {name: W, the encoder's tokens per window}; none: positions never repeat
        self.stats = nn.ModuleDict({name: _EncoderStats(positions.get(name, 1), dim)
                                    for name, dim in encoder_dims.items()})

    def positions(self, name: str, n: int) -> torch.Tensor:
        """The position each of n tokens takes [n]: n itself, or its place within its window (n mod W)."""
        index = torch.arange(n)
        return index % self.periods[name] if self.periods.get(name) else index

    def forward(self, audio: dict) -> dict:
        out = {}
        for name, (tokens, mask) in audio.items():
            mean, scale = self._means(name, tokens.shape[1]), self.stats[name].scale
            normed = (tokens - mean.to(tokens.dtype)) / scale.to(tokens.dtype)
            out[name] = (normed * mask.unsqueeze(-1).to(tokens.dtype), mask)
        return out

    def _means(self, name: str, n: int) -> torch.Tensor:
        """μ for tokens 0..n-1 [n, D]: their positions' fitted means, the mean over positions past those fitted."""
        stats = self.stats[name]
        table = torch.cat([stats.mean, stats.fallback[None]])  # [P + 1, D]: row P is the fallback
        return table[self.positions(name, n).clamp(max=stats.mean.shape[0]).to(table.device)]

    @torch.no_grad()
    def fit(self, batches: list[dict], periods: dict[str, int] | None = None) -> dict[str, int]:
        """Statistics from feature dicts ({name: (tokens [B, N, D], mask [B, N])}, e.g. the training clips'
        features), accumulated in float64 → the fitted position count per encoder, which goes in the config so the
        buffers have their shapes when the model is loaded again. `periods`: each encoder's tokens per window."""
        if periods is not None:
            self.periods = dict(periods)
        positions = {}
        for name, stats in self.stats.items():
            if not any(bool(audio[name][1].any()) for audio in batches):  # no audio at all: stay the identity
                positions[name] = stats.mean.shape[0]
                continue
            width = self.periods.get(name) or max(audio[name][0].shape[1] for audio in batches)
            sums = torch.zeros(width, stats.scale.shape[0], dtype=torch.float64)
            counts = torch.zeros(width, 1, dtype=torch.float64)
            for audio in batches:  # pass 1: μ[n], the per-position mean over clips
                tokens, mask = audio[name]
                m = mask.double().unsqueeze(-1)
                at = self.positions(name, tokens.shape[1])
                sums.index_add_(0, at, (tokens.double() * m).sum(0))
                counts.index_add_(0, at, m.sum(0))
            # Real tokens fill positions from the start. Under MIN_CLIPS_PER_POSITION clips no position is fitted
            # (a mean over one clip would erase that clip): every position then takes the mean over positions.
            kept = int((counts[:, 0] >= MIN_CLIPS_PER_POSITION).sum())
            stats.mean = (sums[:kept] / counts[:kept]).float().to(stats.scale.device)
            stats.fallback.copy_((sums.sum(0) / counts.sum()).float())
            squares, seen = torch.zeros_like(sums[0]), 0.0
            for audio in batches:  # pass 2: σ[c] over what remains once μ is removed, at the fitted positions
                tokens, mask = audio[name]
                if kept:
                    mask = mask & (self.positions(name, tokens.shape[1]) < kept).to(mask.device)
                centred = (tokens.double() - self._means(name, tokens.shape[1]).double()) * mask.double().unsqueeze(-1)
                squares += centred.pow(2).sum((0, 1))
                seen += float(mask.sum())
            var = squares / seen
            # a channel that never varies would be divided by ~0: floor its variance at 1e-6 of the mean variance
            stats.scale.copy_(torch.sqrt(var + 1e-6 * var.mean()).float())
            positions[name] = kept
        return positions

    def save_statistics(self, path: str | Path) -> None:
        """The fitted statistics alone, as safetensors ({name}.mean, .fallback, .scale), written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tmp = path.with_suffix(".tmp")
        save_file({f"{name}.{key}": value.contiguous() for name, stats in self.stats.items()
                   for key, value in stats.state_dict().items()}, str(tmp))
        tmp.replace(path)

    @classmethod
    def from_statistics(cls, path: str | Path, encoder_dims: dict[str, int], periods: dict[str, int] | None = None
                        ) -> tuple[AudioFeatureNorm, dict]:
        """The module `save_statistics` wrote (with the encoders' tokens per window) → (module, {name: fitted
        positions})."""
        from safetensors.torch import load_file

        stats = load_file(str(path))
        positions = {name: stats[f"{name}.mean"].shape[0] for name in encoder_dims}
        module = cls(encoder_dims, positions, periods)
        module.load_state_dict({f"stats.{key}": value for key, value in stats.items()})
        return module, positions


__all__ = ["AudioFeatureNorm"]
