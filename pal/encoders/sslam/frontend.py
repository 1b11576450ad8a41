"""SSLAM's input pipeline after the waveform (docs/design.md#front-end): Kaldi fbank, pad/truncate, normalise.

    log-mel [T, 128] → zero-pad or cut to `target_length` frames IN THE LOG DOMAIN (padded cells read 0 before
    normalisation, 0.467 after) → (x - mean) / (2·std) with the AudioSet statistics by default.

Audio longer than the window: `long_audio="truncate"` keeps the first window (the reference behaviour);
`"split"` cuts consecutive windows (the last one padded) so every frame is encoded. Never silent: the caller chooses.

Notation: B clips, W windows, T frames, M mel bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kaldi_fbank import kaldi_fbank, num_frames
from ..outputs import pad_rows

LONG_AUDIO = ("truncate", "split")
FRAME_MS, HOP_MS = 25, 10  # Kaldi fbank frames (kaldi_fbank.py)


@dataclass
class FrontendConfig:
    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024  # frames per window (10.24 s); a multiple of the patch size
    norm_mean: float = -4.268  # AudioSet statistics (docs/design.md#front-end)
    norm_std: float = 4.569
    long_audio: str = "truncate"

    def __post_init__(self):
        if self.long_audio not in LONG_AUDIO:
            raise ValueError(f"long_audio = {self.long_audio!r}: expected one of {LONG_AUDIO}.")

    @property
    def min_samples(self) -> int:
        """The shortest clip with at least one fbank frame (25 ms at 16 kHz)."""
        return int(self.sample_rate * FRAME_MS / 1000)

    @property
    def window_samples(self) -> int:
        """The longest clip that fits one window of `target_length` frames (10.24 s by default)."""
        return self.min_samples + (self.target_length - 1) * int(self.sample_rate * HOP_MS / 1000)


def fit_length(fbank: torch.Tensor, target_length: int) -> torch.Tensor:
    """[T, M] → [target_length, M]: zero frames appended, or the first target_length kept."""
    frames = fbank.shape[0]
    if frames >= target_length:
        return fbank[:target_length]
    return torch.nn.functional.pad(fbank, (0, 0, 0, target_length - frames))


def normalize(fbank: torch.Tensor, config: FrontendConfig) -> torch.Tensor:
    return (fbank - config.norm_mean) / (config.norm_std * 2)


def batch_fbank(waveforms: list[torch.Tensor], config: FrontendConfig) -> list[torch.Tensor]:
    """Mono 16 kHz clips of any lengths → their log-mel [T_i, M], computed in one batched call."""
    lengths = [int(w.shape[-1]) for w in waveforms]
    short = [i for i, n in enumerate(lengths) if num_frames(n) == 0]
    if short:  # never encode a silent zero spectrogram in their place
        raise ValueError(f"clips {short} are shorter than one {FRAME_MS} ms fbank frame ({config.min_samples} samples): "
                         "drop them before encoding.")
    padded, _ = pad_rows(waveforms, torch.float32)
    fbank = kaldi_fbank(padded, config.sample_rate, config.num_mel_bins)
    # Frames past a clip's own end would cover zero padding; Kaldi never computes them.
    return [fbank[i, : num_frames(n)] for i, n in enumerate(lengths)]


def model_inputs(waveforms: list[torch.Tensor], config: FrontendConfig) -> tuple[torch.Tensor, list[int]]:
    """Clips → normalised windows [sum of W_i, target_length, M], and W_i (windows per clip).

    With "truncate" every clip gives one window; with "split", ceil(T_i / target_length) windows.
    """
    windows, counts = [], []
    for fbank in batch_fbank(waveforms, config):
        if config.long_audio == "split" and fbank.shape[0] > config.target_length:
            pieces = list(fbank.split(config.target_length))
        else:
            pieces = [fbank]
        windows.extend(normalize(fit_length(p, config.target_length), config) for p in pieces)
        counts.append(len(pieces))
    return torch.stack(windows), counts
