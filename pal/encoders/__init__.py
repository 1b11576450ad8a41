"""Frozen audio encoders (SSLAM, CLAP, Whisper), their front-ends, the ensemble and the feature cache.

Every encoder produces the same output type, consumed by the model core: `{name: (tokens [B, N_e, D_e],
mask [B, N_e])}`, real tokens first in each row (see `outputs.py`).
"""


def __getattr__(name: str):  # lazy (PEP 562): `pal --help` must not load torch
    if name == "EncoderOutputs":
        from .outputs import EncoderOutputs

        return EncoderOutputs
    raise AttributeError(f"module 'pal.encoders' has no attribute {name!r}")


__all__ = ["EncoderOutputs"]
