"""PAL: audio LLMs from frozen audio encoders and Hugging Face causal LMs, joined by LAL, PLITS or the PAL hybrid.

`import pal` registers model type "pal" with transformers' AutoConfig, AutoModel and AutoModelForCausalLM, so an
exported folder loads through them. The `pal` command (and `python -m ...`, how ranks start) skips that at start-up:
it would load torch and transformers (about 4 s) before `pal --help` can answer; its commands import the model files,
which register, when they need them.
"""

import importlib
import os
import sys

# Other names resolve on first use (PEP 562).
_EXPORTS = {
    "PALConfig": ".configuration_pal", "PLITSConfig": ".configuration_pal", "LALConfig": ".configuration_pal",
    "XAttnConfig": ".configuration_pal", "PALCache": ".audio_cache", "AudioFeatures": ".modeling_pal",
    "PALForConditionalGeneration": ".modeling_pal", "AUDIO_PLACEHOLDER": ".processing_pal",
    "PALProcessor": ".processing_pal", "TRAINABLE_GROUPS": ".trainable", "attach_lora": ".trainable",
    "set_trainable": ".trainable",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'pal' has no attribute {name!r}")


def _started_as_command() -> bool:
    """True in an interpreter started as the `pal` console script or by `python -m` (sys.argv[0] is "-m" while
    runpy imports the package)."""
    return sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0] if sys.argv else "") in ("pal", "pal.exe")


if not _started_as_command():
    from . import modeling_pal  # noqa: F401  (registers the Auto classes on import)


__all__ = [
    "AUDIO_PLACEHOLDER",
    "AudioFeatures",
    "LALConfig",
    "PALCache",
    "PALConfig",
    "PALForConditionalGeneration",
    "PALProcessor",
    "PLITSConfig",
    "TRAINABLE_GROUPS",
    "XAttnConfig",
    "attach_lora",
    "set_trainable",
]
