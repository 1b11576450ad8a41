"""CLAP's audio tower as a frozen token source (Hugging Face `ClapModel`, loaded from a local folder).

The HTSAT tower's last hidden state [B, C, F', T'] becomes tokens [B, F'·T', C] (frequency-major, as the tower lays
them out). CLAP's feature extractor pads or repeats every clip to its fixed 10 s input, so every token is real. A longer clip
follows `long_audio` here, deterministically: its first window ("truncate") or every window, tokens concatenated
("split"); the extractor's own random crop never runs.

Notation: B clips, N tokens, D width.
"""

from __future__ import annotations

import torch
from torch import nn

from .outputs import join_windows, split_windows


class ClapEncoder(nn.Module):
    def __init__(self, audio_model: nn.Module, feature_extractor, long_audio: str = "truncate"):
        super().__init__()
        self.audio_model = audio_model
        self.feature_extractor = feature_extractor
        self.long_audio = long_audio
        self.dim = int(audio_model.config.hidden_size)
        self.sample_rate = int(feature_extractor.sampling_rate)  # 48 kHz for the released CLAP models
        self.min_samples = 1
        self.window_samples = int(feature_extractor.nb_max_samples)  # 10 s

    @classmethod
    def from_pretrained(cls, path, long_audio: str = "truncate") -> ClapEncoder:
        from transformers import ClapFeatureExtractor, ClapModel

        model = ClapModel.from_pretrained(path, local_files_only=True)
        return cls(model.audio_model, ClapFeatureExtractor.from_pretrained(path, local_files_only=True), long_audio)

    def token_count(self, samples: int) -> int:
        """Tokens a clip of `samples` gives: its windows times the model's fixed tokens per window (measured once on
        a second of silence)."""
        if not hasattr(self, "_per_window"):
            self._per_window = int(self([torch.zeros(self.sample_rate)])[0].shape[1])
        windows = -(-samples // self.window_samples) if self.long_audio == "split" else 1  # as split_windows cuts
        return max(windows, 1) * self._per_window

    @torch.no_grad()
    def forward(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono clips at the extractor's rate → (tokens [B, N, D], all-True mask [B, N])."""
        pieces = [split_windows(w, self.window_samples, self.long_audio) for w in waveforms]
        inputs = self.feature_extractor(
            [w.cpu().numpy() for clip in pieces for w in clip], sampling_rate=self.sample_rate,
            return_tensors="pt",
        )
        param = next(self.audio_model.parameters())
        out = self.audio_model(
            input_features=inputs["input_features"].to(param.device, param.dtype),
            is_longer=inputs.get("is_longer"),
        )
        tokens = out.last_hidden_state.flatten(2).transpose(1, 2)  # [W, C, F', T'] → [W, F'·T', C]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return join_windows(tokens, mask, [len(p) for p in pieces])
