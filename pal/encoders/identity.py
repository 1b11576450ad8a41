"""Content identities of encoders (which model made a feature cache's tokens) and the ensemble record a trained
model keeps. Audio files are identified by their content hash (common/hashing.py).

Both the feature cache and a trained model folder record encoder identities, so stale features or a model paired
with other encoders than it was trained with are errors rather than silent mismatches.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from pal.common.hashing import file_hash

from .ensemble import EncoderSpec

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


def _paths_from(folder: Path, config):
    """`config` with each encoder's relative path read from `folder` (absolute paths and presets as they are)."""
    encoders = {name: replace(spec, path=os.path.join(folder, spec.path)) if spec.path else spec
                for name, spec in config.encoders.items()}
    return replace(config, encoders=encoders)


def write_ensemble_record(folder: str | Path, config, inside: bool = False) -> None:
    """Save an ensemble's config and identities beside a model, so it can be rebuilt and checked at inference.

    inside: the encoders' paths are relative to `folder` and written so (a self-contained export); otherwise they are
    made absolute against the working directory."""
    folder = Path(folder)
    on_disk = _paths_from(folder if inside else Path.cwd(), config)
    identity = {name: encoder_hash(spec, config.dtype) for name, spec in on_disk.encoders.items()}
    record = {"config": asdict(config if inside else on_disk), "identity": identity}
    (folder / ENSEMBLE_RECORD).write_text(json.dumps(record, indent=1))


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
    config = _paths_from(Path(folder), EnsembleConfig.from_dict(record["config"]))  # relative: inside the folder
    for name, spec in config.encoders.items():
        if spec.path and not Path(spec.path).exists():
            raise FileNotFoundError(
                f"{folder} was trained with encoder {name!r} from {spec.path}, which is missing: restore it there, or "
                "load an export of the model (`pal export`), which carries its encoders."
            )
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
