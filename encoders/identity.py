"""Content identities: of an audio file (which features belong to it) and of an encoder (which model made them).

Both the feature cache and a trained model folder record encoder identities, so stale features or a model paired
with other encoders than it was trained with are errors rather than silent mismatches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from .ensemble import EncoderSpec


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (of a folder: of every file's path inside it and bytes, in name order), first 16 hex
    digits. Where the file or folder lies and what it is called do not count, so a moved or renamed file keeps its
    identity.

    Memoised on (path, size, modification time), so a cache lookup per training step does not re-read the audio;
    an edited file gets a new entry.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamps = tuple((str(f), f.relative_to(path).as_posix() if f != path else "", f.stat().st_size, f.stat().st_mtime_ns)
                   for f in files)
    return _hash_files(stamps)


@lru_cache(maxsize=1 << 16)
def _hash_files(stamps: tuple) -> str:
    digest = hashlib.sha256()
    for name, inside, size, _ in stamps:
        digest.update(f"{inside}\0{size}\0".encode())  # the size ends each file's bytes: no two folders hash alike
        with open(name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


# Bump whenever the computation of tokens changes in a way no setting shows (a front-end formula, a constant such as
# the fbank normalisation, an encoder's forward): feature caches and trained-model records made before then become
# errors instead of serving tokens the code no longer computes.
# 1: first recorded version. 2: SSLAM's mel banks use the reference's log(1 + f/700) (fbank within 1e-6 of it).
FEATURES_VERSION = 2

# EncoderSpec fields that do not change the tokens: where the weights lie (their content counts instead) and whether a
# .pt may be fully unpickled. Every other field, today's and any added later, is part of the identity.
NOT_IDENTITY = ("path", "trust_checkpoint")


def encoder_hash(spec: EncoderSpec, dtype: str) -> str:
    """Identifies an encoder by what decides its tokens: its settings (all but NOT_IDENTITY), the dtype, the content
    of its weights file or folder and FEATURES_VERSION. Moving the weights keeps the identity; any of these changing
    changes it."""
    settings = {k: v for k, v in asdict(spec).items() if k not in NOT_IDENTITY}
    identity = {"settings": settings, "dtype": dtype, "features_version": FEATURES_VERSION,
                "weights": file_hash(spec.path) if spec.path else None}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# The encoders a trained model folder was trained with
# ----------------------------------------------------------------------------------------------------------------------

ENSEMBLE_RECORD = "encoders.json"


def write_ensemble_record(folder: str | Path, config) -> None:
    """Save an ensemble's config and identities beside a model, so it can be rebuilt and checked at inference."""
    identity = {name: encoder_hash(spec, config.dtype) for name, spec in config.encoders.items()}
    Path(folder, ENSEMBLE_RECORD).write_text(json.dumps({"config": asdict(config), "identity": identity}, indent=1))


def read_ensemble_record(folder: str | Path):
    """→ (EnsembleConfig, {name: identity}) of a model folder; errors say what is missing or changed."""
    from .ensemble import EnsembleConfig

    path = Path(folder, ENSEMBLE_RECORD)
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {ENSEMBLE_RECORD}: it does not say which encoders it was trained with. Folders written "
            "by `pal train` carry it; for another folder pass the ensemble YAML it was trained with (--encoders)."
        )
    record = json.loads(path.read_text())
    config = EnsembleConfig.from_dict(record["config"])
    changed = {name: (recorded, encoder_hash(config.encoders[name], config.dtype))
               for name, recorded in record["identity"].items()
               if encoder_hash(config.encoders[name], config.dtype) != recorded}
    if changed:
        raise ValueError(
            f"{folder} was trained with encoders whose weights or settings have changed since {changed} (recorded "
            "identity, identity now; the feature code version FEATURES_VERSION counts too): restore the original "
            "encoder files and settings, or retrain with the new ones."
        )
    return config, record["identity"]
