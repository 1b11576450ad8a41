"""CLAP's audio tower as a frozen token source (Hugging Face `ClapModel`, loaded from a local folder).

The HTSAT tower's last hidden state [B, C, F', T'] becomes tokens [B, F'·T', C] (frequency-major, as the tower lays
them out). CLAP's feature extractor pads or repeats every clip to its fixed 10 s input, so every token is real.

Notation: B clips, N tokens, D width.
"""

from __future__ import annotations

import torch
from torch import nn


class ClapEncoder(nn.Module):
    def __init__(self, audio_model: nn.Module, feature_extractor):
        super().__init__()
        self.audio_model = audio_model
        self.feature_extractor = feature_extractor
        self.dim = int(audio_model.config.hidden_size)
        self.sample_rate = int(feature_extractor.sampling_rate)  # 48 kHz for the released CLAP models

    @classmethod
    def from_pretrained(cls, path) -> "ClapEncoder":
        from transformers import ClapFeatureExtractor, ClapModel

        model = ClapModel.from_pretrained(path, local_files_only=True)
        return cls(model.audio_model, ClapFeatureExtractor.from_pretrained(path, local_files_only=True))

    @torch.no_grad()
    def forward(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono clips at the extractor's rate → (tokens [B, N, D], all-True mask [B, N])."""
        inputs = self.feature_extractor(
            [w.cpu().numpy() for w in waveforms], sampling_rate=self.sample_rate,
            return_tensors="pt",
        )
        param = next(self.audio_model.parameters())
        out = self.audio_model(
            input_features=inputs["input_features"].to(param.device, param.dtype),
            is_longer=inputs.get("is_longer"),
        )
        tokens = out.last_hidden_state.flatten(2).transpose(1, 2)  # [B, C, F', T'] → [B, F'·T', C]
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
