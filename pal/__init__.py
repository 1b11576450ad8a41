"""PAL: audio LLMs from frozen audio encoders and Hugging Face causal LMs, joined by LAL, PLITS or the PAL hybrid."""

import importlib

# Names resolve on first use (PEP 562), so `pal --help` and `import pal.cli.main` do not load torch and transformers.
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
