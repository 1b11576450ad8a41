"""The connectors the toolkit compares, named once: `pal bench efficiency / curriculum / inference` and
`pal compare --preset smoke` build them from here (the comparison YAMLs in configs/compare/ write the same choices).

Each preset is the PALConfig fields that make the connector what it is; sizes that depend on the LLM or on the
measurement (the first audio layer, the number of summary tokens, a low rank) are given on top:
    >>> connector_preset("lal", lal_start_layer=4)
    {'connector': 'lal', 'lal_start_layer': 4}
"""

from __future__ import annotations

CONNECTOR_PRESETS: dict[str, dict] = {
    "plits": {"connector": "plits"},  # every encoder's tokens in the sequence (LLaVA / Pengi)
    "lal": {"connector": "lal"},  # every encoder as keys/values (P_l recomputed in backward: the default)
    "lal_stored": {"connector": "lal", "lal_recompute_audio": False},  # the same, P_l's activations kept
    "lal_lowrank": {"connector": "lal", "lal_projection": "lowrank"},  # one shared map plus a low-rank one per layer
    # PAL's single-encoder form: `n_summary` latent tokens through PLITS, the whole sequence through LAL
    "pal": {"connector": "pal", "qformer_layers": 1},
    "xattn": {"connector": "xattn", "xattn_every": 4},  # gated cross-attention blocks, Flamingo style
}


def connector_preset(name: str, **sizes) -> dict:
    """The preset's PALConfig fields with `sizes` on top (a new dict)."""
    if name not in CONNECTOR_PRESETS:
        raise ValueError(f"unknown connector preset {name!r}; choose from {sorted(CONNECTOR_PRESETS)}.")
    return {**CONNECTOR_PRESETS[name], **sizes}
