"""Which parameters train: named groups, selected by name from a stage config, and LoRA through PEFT.

Groups (a parameter may sit in several; a parameter trains if any selected group holds it):
    connector        every connector parameter (PLITS projectors, summary latents, LAL projections P_l,
                     cross-attention blocks)
    plits            the PLITS projectors and summary latents only
    lal              the LAL projections P_l only
    xattn            the cross-attention blocks and their audio projections only
    llm              every LLM parameter except LoRA adapters
    llm_attention    the LLM's q/k/v/o projections
    llm_ffn          the LLM's MLPs
    llm_norms        the LLM's RMSNorms
    llm_embeddings   the token embeddings and the LM head
    lora             LoRA adapter matrices (after `attach_lora`)
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from .configuration_pal import ROUTES

_ATTENTION = re.compile(r"\.self_attn\.[qkvo]_proj\.")
_LORA = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.")


def _under(prefix: str) -> Callable[[str], bool]:
    return lambda n: n.startswith(prefix + ".")


TRAINABLE_GROUPS: dict[str, Callable[[str], bool]] = {
    # Each route's connector sits on the model under the route's name (modeling_pal.py), so its group is that name.
    "connector": lambda n: n.split(".", 1)[0] in ROUTES,
    **{route: _under(route) for route in ROUTES},
    "llm": lambda n: n.startswith("llm.") and not _LORA.search(n),
    "llm_attention": lambda n: n.startswith("llm.") and bool(_ATTENTION.search(n)) and not _LORA.search(n),
    "llm_ffn": lambda n: n.startswith("llm.") and ".mlp." in n and not _LORA.search(n),
    "llm_norms": lambda n: n.startswith("llm.") and ("layernorm" in n or n.startswith("llm.model.norm.")),
    "llm_embeddings": lambda n: n.startswith(("llm.model.embed_tokens.", "llm.lm_head.")),
    "lora": lambda n: bool(_LORA.search(n)),
}

LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}


def set_trainable(model: nn.Module, groups: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Make exactly the parameters of `groups` trainable; everything else is frozen.

    Returns {group: number of parameters (elements) it selected}. Raises ValueError for an unknown group, or for a
    group that selects nothing (e.g. "lora" before LoRA is attached), so a stage never trains less than it says.
    """
    unknown = [g for g in groups if g not in TRAINABLE_GROUPS]
    if unknown:
        raise ValueError(f"unknown trainable group(s) {unknown}; choose from {sorted(TRAINABLE_GROUPS)}.")
    counts = dict.fromkeys(groups, 0)
    for name, param in model.named_parameters():
        hits = [g for g in groups if TRAINABLE_GROUPS[g](name)]
        param.requires_grad_(bool(hits))
        for g in hits:
            counts[g] += getattr(param, "ds_numel", param.numel())  # ZeRO-3 (zero.Init): the whole tensor's size
    empty = [g for g, n in counts.items() if n == 0]
    if empty:
        raise ValueError(
            f"trainable group(s) {empty} select no parameter in this model"
            + (" (attach LoRA first: set `lora` in the model config)." if "lora" in empty else ".")
        )
    _dropout_only_where_lora_trains(model)
    return counts


def _dropout_only_where_lora_trains(model: nn.Module) -> None:
    """A frozen LoRA adapter's input dropout is switched off (p = 0, PyTorch then returns its input untouched) and
    restored when the adapter trains again. It only adds noise to a function that nothing learns in, and on a CPU it
    is not cheap: in a connector-only stage it took as long as the LLM's forward linear layers (docs/efficiency.md).
    A fresh adapter (lora_B = 0) gives exactly the same output either way."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for adapter, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout):
                dropout.trained_p = getattr(dropout, "trained_p", dropout.p)  # the configured rate, kept once
                dropout.p = dropout.trained_p if module.lora_A[adapter].weight.requires_grad else 0.0


def attach_lora(llm: nn.Module, lora: dict) -> None:
    """Inject PEFT LoRA adapters into the LLM in place (keys gain `.base_layer` / `.lora_A` / `.lora_B`).

    `lora`: {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}.
    LAL audio keys/values pass through the adapted k_proj/v_proj, so LoRA shapes audio keys too.
    """
    from peft import LoraConfig, inject_adapter_in_model

    unknown = set(lora) - LORA_KEYS
    if unknown:
        raise ValueError(f"unknown LoRA setting(s) {sorted(unknown)}; expected keys from {sorted(LORA_KEYS)}.")
    config = LoraConfig(
        r=int(lora.get("r", 8)),
        lora_alpha=float(lora.get("alpha", 16)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(lora.get("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])),
    )
    inject_adapter_in_model(config, llm)
    # PEFT's initialisation (lora_B = 0: the adapted LLM starts as the LLM itself) is final; the wrapper's post_init
    # must not draw the adapters again as if they were fresh layers.
    for name, param in llm.named_parameters():
        if ".lora_" in name:
            param._is_hf_initialized = True
