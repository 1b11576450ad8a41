"""From waveforms to SSLAM tokens: front-end + frozen encoder, with a choice of layer and pooling.

Output per clip (time-major, as the official code orders them): the CLS token, then the patches `1 + F_p·t + f`.
With `long_audio="split"`, a clip's windows are encoded separately and their token sequences concatenated
(CLS₁, patches₁, CLS₂, patches₂, ...), so rows of a batch can differ in length: the mask marks the real tokens.

Notation: B clips, N tokens, D width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..kaldi_fbank import num_frames
from ..outputs import join_windows
from .frontend import FrontendConfig, model_inputs
from .model import SSLAMEncoder, pool_tokens


@dataclass
class SSLAMFeatures:
    """Frozen SSLAM feature extraction. `layer`: which hidden state (0 = after the context norm, depth = last)."""

    model: SSLAMEncoder
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    layer: int | None = None
    batch_windows: int = 8  # windows per encoder call, to bound memory

    def __post_init__(self):
        depth = self.model.config.depth
        if self.layer is not None and not 0 <= self.layer <= depth:
            raise ValueError(f"layer = {self.layer}: expected 0..{depth} (0 = before block 1, {depth} = last block).")
        self.model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return self.model.config.embed_dim

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def min_samples(self) -> int:
        return self.frontend.min_samples

    @property
    def window_samples(self) -> int:
        return self.frontend.window_samples

    @property
    def long_audio(self) -> str:
        return self.frontend.long_audio

    def token_count(self, samples: int) -> int:
        """Tokens a clip of `samples` gives (`model_inputs`' windows, each 1 + its patches), no encoder run."""
        frames, window = num_frames(samples), self.frontend.target_length
        windows = -(-frames // window) if self.frontend.long_audio == "split" and frames > window else 1
        patch = self.model.config.patch_size
        return windows * (1 + (window // patch) * (self.frontend.num_mel_bins // patch))

    @torch.no_grad()
    def windows(self, spec: torch.Tensor) -> torch.Tensor:
        """Normalised windows [W, T, M] → tokens [W, 1 + N, D] of the chosen layer."""
        layer = self.model.config.depth if self.layer is None else self.layer
        outs = []
        for chunk in spec.split(self.batch_windows):
            outs.append(self.model(chunk.to(next(self.model.parameters()).device)).hidden_states[layer])
        return torch.cat(outs)

    @torch.no_grad()
    def __call__(self, waveforms: list[torch.Tensor], pool: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
        """Mono 16 kHz clips → (tokens [B, N_max, D], mask [B, N_max]); pooled: ([B, D], all-True [B])."""
        spec, counts = model_inputs(waveforms, self.frontend)
        tokens = self.windows(spec)
        per_clip = list(tokens.split(counts))  # each [W_i, 1 + N, D]
        if pool != "none":
            pooled = torch.stack([pool_tokens(w, pool).mean(0) for w in per_clip])
            return pooled, torch.ones(len(per_clip), dtype=torch.bool)
        return join_windows(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device), counts)
