"""Whisper's encoder as a frozen token source (Hugging Face `WhisperModel`, loaded from a local folder).

Whisper always encodes 30 s (3000 log-mel frames → 1500 tokens of 20 ms). The mask marks only the tokens that cover
the real audio, ceil(samples / 320), so the padding of a short clip never reaches the LLM. A clip over 30 s follows
`long_audio`: its first 30 s ("truncate") or every 30 s window, their real tokens concatenated ("split").

`context_seconds` < 30 encodes shorter windows (whisper.cpp's "audio_ctx"): the positional table is cut to the window
and the features padded to it instead of 30 s: the encoder's cost falls with the window, at some distance from the
30 s encoding the model was trained with (docs/encoders.md measures both); 30 is exact.

Notation: B clips, N tokens (1500 for 30 s), D width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .outputs import join_windows, split_windows

SAMPLES_PER_TOKEN = 320  # 160-sample hop × the encoder's stride-2 convolution


def shorter_context(encoder: nn.Module, feature_extractor, seconds: int):
    """A Whisper encoder and feature extractor for `seconds`-long windows: the same weights, the positional table cut
    to the window's 50 positions per second."""
    import copy

    from transformers import WhisperFeatureExtractor

    if not 1 <= seconds <= 30:
        raise ValueError(f"context_seconds = {seconds}: expected 1..30.")
    config = copy.deepcopy(encoder.config)
    config.max_source_positions = seconds * 50
    short = type(encoder)(config)
    state = encoder.state_dict()
    state["embed_positions.weight"] = state["embed_positions.weight"][: config.max_source_positions]
    short.load_state_dict(state)
    extractor = WhisperFeatureExtractor(**{**feature_extractor.to_dict(), "chunk_length": seconds})
    return short.to(next(encoder.parameters()).dtype), extractor


class WhisperEncoder(nn.Module):
    def __init__(self, encoder: nn.Module, feature_extractor, layer: int | None = None, long_audio: str = "truncate",
                 context_seconds: int = 30):
        super().__init__()
        if context_seconds < 30:
            encoder, feature_extractor = shorter_context(encoder, feature_extractor, context_seconds)
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.layer = layer
        self.long_audio = long_audio
        self.dim = encoder.config.d_model
        self.sample_rate = 16000
        self.min_samples = 1
        self.window_samples = int(feature_extractor.n_samples)  # 30 s

    @classmethod
    def from_pretrained(cls, path, layer: int | None = None, long_audio: str = "truncate",
                        context_seconds: int = 30) -> WhisperEncoder:
        from transformers import WhisperFeatureExtractor, WhisperModel

        model = WhisperModel.from_pretrained(path, local_files_only=True)
        return cls(model.get_encoder(), WhisperFeatureExtractor.from_pretrained(path, local_files_only=True), layer,
                   long_audio, context_seconds)

    def token_count(self, samples: int) -> int:
        """Real tokens a clip of `samples` gives (one per 20 ms of each window it encodes), no encoder run."""
        window = self.window_samples
        kept = samples if self.long_audio == "split" else min(samples, window)
        whole, rest = divmod(kept, window)
        per_window = math.ceil(window / SAMPLES_PER_TOKEN)
        return whole * per_window + math.ceil(rest / SAMPLES_PER_TOKEN)

    @torch.no_grad()
    def forward(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mono 16 kHz clips → (tokens [B, N, D], mask [B, N]); N = 1500 per 30 s window."""
        pieces = [split_windows(w, self.window_samples, self.long_audio) for w in waveforms]
        windows = [p for clip in pieces for p in clip]
        features = self.feature_extractor(
            [w.cpu().numpy() for w in windows], sampling_rate=16000, return_tensors="pt"
        )["input_features"]
        param = next(self.encoder.parameters())
        out = self.encoder(features.to(param.device, param.dtype), output_hidden_states=self.layer is not None)
        tokens = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]  # [W, 1500, D]
        real = torch.tensor([math.ceil(w.shape[-1] / SAMPLES_PER_TOKEN) for w in windows])
        mask = torch.arange(tokens.shape[1])[None, :] < real.clamp(max=tokens.shape[1])[:, None]
        return join_windows(tokens, mask.to(tokens.device), [len(p) for p in pieces])
