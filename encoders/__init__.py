"""Frozen audio encoders (SSLAM, CLAP, Whisper), their front-ends, the ensemble and the feature cache.

Every encoder produces the same output type, consumed by the model core: `{name: (tokens [B, N_e, D_e],
mask [B, N_e])}`, real tokens first in each row (see `outputs.py`).
"""

from .outputs import EncoderOutputs

__all__ = ["EncoderOutputs"]
