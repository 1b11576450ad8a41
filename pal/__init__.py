"""PAL: audio LLMs from frozen audio encoders and Hugging Face causal LMs, joined by LAL, PLITS or the PAL hybrid."""

from .configuration_pal import PALConfig
from .lal_injection import PALCache
from .modeling_pal import AudioFeatures, PALForConditionalGeneration
from .processing_pal import AUDIO_PLACEHOLDER, PALProcessor
from .trainable import TRAINABLE_GROUPS, attach_lora, set_trainable

__all__ = [
    "AUDIO_PLACEHOLDER",
    "AudioFeatures",
    "PALCache",
    "PALConfig",
    "PALForConditionalGeneration",
    "PALProcessor",
    "TRAINABLE_GROUPS",
    "attach_lora",
    "set_trainable",
]
