"""Reading audio: any format soundfile reads (WAV, FLAC, OGG/Vorbis, MP3), mono, 16 kHz, DC removed.

Resampling uses `scipy.signal.resample_poly` (a polyphase Kaiser-windowed FIR), a well-kept library; the official
SSLAM code used torchaudio's sinc resampler, which does not run here (environment.md). Resampled features therefore
differ slightly from the reference for non-16 kHz files; 16 kHz files are untouched.

Bad audio raises `AudioError` naming the file and the problem: missing, unreadable or corrupt, empty, NaN/inf
samples, or longer than `max_seconds`.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

TARGET_SAMPLE_RATE = 16000
MAX_SECONDS = 3600.0  # one hour: anything longer is almost surely a mistake (e.g. a wrong file in a manifest)


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """[S] float → [S·target/orig] with a polyphase filter (scipy)."""
    if orig_rate == target_rate:
        return waveform
    from scipy.signal import resample_poly

    ratio = Fraction(target_rate, orig_rate)
    return resample_poly(waveform, ratio.numerator, ratio.denominator).astype(np.float32)


def load_audio(path: str | Path, sample_rate: int = TARGET_SAMPLE_RATE, max_seconds: float = MAX_SECONDS,
               remove_dc: bool = True) -> torch.Tensor:
    """Read a file → mono float32 waveform [S] at `sample_rate`, with its mean removed (sslam-spec §2.1)."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file.")
    try:
        info = soundfile.info(str(path))
        if info.frames > 0 and info.samplerate > 0 and info.frames / info.samplerate > max_seconds:
            raise AudioError(
                f"{path}: {info.frames / info.samplerate:.0f} s long, over the {max_seconds:.0f} s limit; "
                "cut it, or raise max_seconds if this is intended."
            )
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad bytes
        raise AudioError(f"{path}: unreadable or corrupt audio ({err}).") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples.")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: the audio contains NaN or infinite samples.")
    mono = data.mean(axis=1)  # channel mean, as the official dataset does
    mono = resample(mono, rate, sample_rate)
    waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    return waveform - waveform.mean() if remove_dc else waveform
