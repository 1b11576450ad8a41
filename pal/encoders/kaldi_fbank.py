"""Kaldi-compatible log-mel filterbank in torch, batched, on CPU or GPU.

Written from the Kaldi definition (feat/feature-window.cc, feat/mel-computations.cc) with the defaults that
`torchaudio.compliance.kaldi.fbank` uses, because no torchaudio works on our machines (docs/design.md#environment)
and the numpy path of transformers' `ASTFeatureExtractor` is slow and unbatched. Per frame:
    frame (25 ms, 10 ms hop, snip_edges) → remove DC → pre-emphasis 0.97 (first sample against itself) →
    Hann window (symmetric) → zero-pad to a power of two → |FFT|² → triangular mel banks on the mel scale
    1127·ln(1 + f/700) from low_freq to high_freq (0 = Nyquist) → log, floored at float32 epsilon.

Notation: B batch, S samples, T frames, M mel bins.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps  # log floor: ln(eps) = -15.942385


def _mel(freq):
    # log(1 + f/700), not log1p: the reference (Kaldi as torchaudio computes it) rounds 1 + f/700 to float32 first,
    # and log1p's banks differ from its by up to 2e-5 (fbank by up to 1.7e-4 on the SSLAM fixture).
    return 1127.0 * torch.log(1.0 + freq / 700.0) if torch.is_tensor(freq) else 1127.0 * math.log(1.0 + freq / 700.0)


@lru_cache(maxsize=16)
def mel_banks(num_bins: int, fft_size: int, sample_rate: float, low_freq: float, high_freq: float) -> torch.Tensor:
    """Triangular mel filters [M, fft_size // 2 + 1] (the Nyquist column is zero, as in Kaldi)."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"mel range [{low_freq}, {high_freq}] Hz must lie inside [0, {nyquist}] Hz.")
    num_fft_bins = fft_size // 2
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    # float32 throughout, as Kaldi's BaseFloat: float64 banks move floored cells by up to 2e-3.
    b = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    fft_mel = _mel(sample_rate / fft_size * torch.arange(num_fft_bins, dtype=torch.float32)).unsqueeze(0)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))  # [M, num_fft_bins + 1]


def num_frames(num_samples: int, frame_length: int = 400, frame_shift: int = 160) -> int:
    """Frames Kaldi keeps with snip_edges=True: 1 + (S - 400) // 160 (0 if shorter than one window)."""
    return 0 if num_samples < frame_length else 1 + (num_samples - frame_length) // frame_shift


def kaldi_fbank(
    waveforms: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> torch.Tensor:
    """waveforms [B, S] (or [S]) float → log-mel [B, T, M] with T = 1 + (S - L) // H.

    Every row is framed alike; for rows of different real lengths, compute each row's frame count with
    `num_frames` and ignore the frames past it.
    """
    squeeze = waveforms.dim() == 1
    x = waveforms.unsqueeze(0) if squeeze else waveforms
    x = x.float()
    length = int(sample_rate * frame_length_ms / 1000)
    shift = int(sample_rate * frame_shift_ms / 1000)
    if x.shape[-1] < length:
        raise ValueError(f"audio of {x.shape[-1]} samples is shorter than one {frame_length_ms} ms window ({length}).")
    frames = x.unfold(-1, length, shift)  # [B, T, L]
    frames = frames - frames.mean(-1, keepdim=True)  # per-frame DC removal
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # first sample is its own predecessor
    frames = frames - preemphasis * previous
    window = torch.hann_window(length, periodic=False, dtype=frames.dtype, device=frames.device)
    fft_size = 1 << (length - 1).bit_length()  # round up to a power of two (512 for 400)
    spectrum = torch.fft.rfft(frames * window, n=fft_size)  # zero-padded on the right
    power = (spectrum * spectrum.conj()).real  # |X|² [B, T, fft_size/2 + 1]; abs().pow(2) is 5x slower on CPU
    banks = mel_banks(num_mel_bins, fft_size, float(sample_rate), low_freq, high_freq).to(power.device)
    mel = power @ banks.T  # [B, T, M]
    out = torch.clamp(mel, min=FLOAT32_EPS).log()
    return out[0] if squeeze else out
