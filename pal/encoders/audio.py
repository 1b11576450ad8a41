"""Reading audio: any format soundfile reads (WAV, FLAC, OGG/Vorbis, MP3), mono, 16 kHz, DC removed.

Resampling uses `scipy.signal.resample_poly` (a polyphase Kaiser-windowed FIR), a well-kept library; the official
SSLAM code used torchaudio's sinc resampler, which does not run here (docs/design.md#environment). Resampled
features therefore differ slightly from the reference for non-16 kHz files; 16 kHz files are untouched.

Bad audio raises `AudioError` naming the file and the problem: missing, a folder, unreadable or corrupt, empty,
NaN/inf samples, shorter than the caller's minimum (SSLAM needs one 25 ms fbank frame) or longer than `max_seconds`.
`audio_header_problem` checks what the header tells (readable, length) without decoding, for manifest validation.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from pal.common.audio_source import AudioSourceError, audio_problem, audio_source, read_in_place

TARGET_SAMPLE_RATE = 16000
MAX_SECONDS = 3600.0  # one hour by default: anything longer is more likely a wrong file than a recording to hear
LIMIT_SETTING = "PAL_MAX_AUDIO_SECONDS"  # the environment variable that sets the limit for every command


def max_audio_seconds() -> float:
    """The longest audio accepted: $PAL_MAX_AUDIO_SECONDS when set, else MAX_SECONDS."""
    value = os.environ.get(LIMIT_SETTING)
    if value is None:
        return MAX_SECONDS
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not limit > 0:
        raise ValueError(f"{LIMIT_SETTING}={value!r}: expected a number of seconds > 0.")
    return limit


def too_long(where, seconds: float, limit: float, setting: str) -> str:
    return (f"{where}: {seconds:.0f} s long, over the {limit:.0f} s limit ({setting} raises it); cut it, or raise the "
            "limit if this is intended.")


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the problem."""


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """[S] float → [S·target/orig] with a polyphase filter (scipy)."""
    if orig_rate == target_rate:
        return waveform
    from scipy.signal import resample_poly

    ratio = Fraction(target_rate, orig_rate)
    return resample_poly(waveform, ratio.numerator, ratio.denominator).astype(np.float32)


def audio_header_problem(path: str | Path, min_seconds: float = 0.0, max_seconds: float | None = None) -> str | None:
    """What is wrong with an audio file (or a dataset row's audio, pal/common/audio_source.py) judging by its header
    (no decoding), or None."""
    import io

    import soundfile

    problem = audio_problem(str(path))
    if problem:
        return problem
    source = audio_source(str(path))
    readable = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        info = soundfile.info(readable)
    except Exception as err:  # LibsndfileError / RuntimeError / TypeError for bad bytes
        return f"audio {path} is not a readable audio file ({str(err).replace(repr(readable), 'its bytes')})."
    if info.frames == 0 or info.samplerate <= 0:
        return f"audio {path} holds no samples."
    seconds = info.frames / info.samplerate if info.frames > 0 else None  # -1: the header does not tell
    limit = max_audio_seconds() if max_seconds is None else max_seconds
    if seconds is not None and seconds > limit:
        return "audio " + too_long(path, seconds, limit, f"{LIMIT_SETTING}=SECONDS")
    if seconds is not None and seconds < min_seconds:
        return (f"audio {path} is {seconds * 1000:.1f} ms long, shorter than the {min_seconds * 1000:.0f} ms the "
                "encoders need (SSLAM: one 25 ms fbank frame).")
    return None


def load_audio(path: str | Path | bytes, sample_rate: int = TARGET_SAMPLE_RATE, max_seconds: float | None = None,
               remove_dc: bool = True, min_samples: int = 0, name: str = "the audio",
               setting: str = f"{LIMIT_SETTING}=SECONDS") -> torch.Tensor:
    """Read a file (or a file's bytes, called `name` in errors) → mono float32 waveform [S] at `sample_rate`, with
    its mean removed (docs/design.md#front-end).

    `min_samples`: the shortest usable waveform at `sample_rate` (e.g. 400 for one 25 ms fbank frame at 16 kHz);
    `max_seconds`: the longest (default `max_audio_seconds()`), `setting` what raises it, named in the error.
    """
    import io

    import soundfile

    if not isinstance(path, bytes) and read_in_place(str(path)):  # a dataset row or shard member: its bytes
        try:
            found = audio_source(str(path))
        except AudioSourceError as err:
            raise AudioError(str(err)) from None
        path, name = (found, str(path)) if isinstance(found, bytes) else (found, name)
    if isinstance(path, bytes):
        source, path = io.BytesIO(path), name
    else:
        path = Path(path)
        if path.is_dir():
            raise AudioError(f"{path}: is a folder, not an audio file.")
        if not path.is_file():
            raise AudioError(f"{path}: no such audio file.")
        source = str(path)
    try:
        info = soundfile.info(source)
        if isinstance(source, io.BytesIO):
            source.seek(0)
        limit = max_audio_seconds() if max_seconds is None else max_seconds
        if info.frames > 0 and info.samplerate > 0 and info.frames / info.samplerate > limit:
            raise AudioError(too_long(path, info.frames / info.samplerate, limit, setting))
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError for bad bytes
        if isinstance(source, io.BytesIO):  # libsndfile's words for bytes ("File does not exist") mislead
            raise AudioError(f"{path}: not audio that can be decoded (WAV, FLAC, OGG/Vorbis or MP3), or corrupt.") \
                from None
        raise AudioError(f"{path}: unreadable or corrupt audio ({err}).") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples.")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: the audio contains NaN or infinite samples.")
    mono = data.mean(axis=1)  # channel mean, as the official dataset does
    mono = resample(mono, rate, sample_rate)
    if mono.shape[0] < min_samples:
        raise AudioError(f"{path}: {mono.shape[0] / sample_rate * 1000:.1f} ms long, shorter than the "
                         f"{min_samples / sample_rate * 1000:.0f} ms needed (one 25 ms fbank frame); skip or pad it.")
    waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    return waveform - waveform.mean() if remove_dc else waveform
