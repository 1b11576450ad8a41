"""Whisper's encoder as a frozen token source (Hugging Face `WhisperModel`, loaded from a local folder).

Whisper always encodes 30 s (3000 log-mel frames → 1500 tokens of 20 ms). The mask marks only the tokens that cover
the real audio, ceil(samples / 320), so the padding of a short clip never reaches the LLM.

Notation: B clips, N tokens (1500 for 30 s), D width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SAMPLES_PER_TOKEN = 320  # 160-sample hop × the encoder's stride-2 convolution


class WhisperEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, feature_extractor, layer: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.layer = layer
        self.dim = encoder.config.d_model
        self.sample_rate = 16000

    @classmethod
    def from_pretrained(cls, path, layer: int | None = None) -> "WhisperEncoder":
        from transformers import WhisperFeatureExtractor, WhisperModel

        model = WhisperModel.from_pretrained(path, local_files_only=True)
        return cls(model.get_encoder(), WhisperFeatureExtractor.from_pretrained(path, local_files_only=True), layer)

    @torch.no_grad()
    def forward(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono 16 kHz clips (at most 30 s each) → (tokens [B, 1500, D], mask [B, 1500])."""
        limit = self.feature_extractor.n_samples
        too_long = [i for i, w in enumerate(waveforms) if w.shape[-1] > limit]
        if too_long:
            raise ValueError(f"clips {too_long} exceed Whisper's {limit / 16000:.0f} s window: split them first.")
        features = self.feature_extractor(
            [w.cpu().numpy() for w in waveforms], sampling_rate=16000, return_tensors="pt"
        )["input_features"]
        param = next(self.encoder.parameters())
        out = self.encoder(features.to(param.device, param.dtype), output_hidden_states=self.layer is not None)
        tokens = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        real = torch.tensor([math.ceil(w.shape[-1] / SAMPLES_PER_TOKEN) for w in waveforms])
        mask = torch.arange(tokens.shape[1])[None, :] < real.clamp(max=tokens.shape[1])[:, None]
        return tokens, mask.to(tokens.device)
