"""The connectors the toolkit compares, named once: `pal bench efficiency / curriculum / inference` and
`pal compare --preset smoke` build them from here (the comparison YAMLs in pal:compare/ write the same choices).

Each preset is the PALConfig settings that make the connector what it is; sizes that depend on the LLM or on the
measurement (the first audio layer, the number of summary tokens, a low rank) are given on top, a sub-config's
settings merged into the preset's:
    >>> connector_preset("pal", lal_config={"start_layer": 4}, plits_config={"n_summary": 8})
    {'connector': 'pal', 'plits_config': {'qformer_layers': 1, 'n_summary': 8}, 'lal_config': {'start_layer': 4}}
"""

from __future__ import annotations

CONNECTOR_PRESETS: dict[str, dict] = {
    "plits": {"connector": "plits"},  # every encoder's tokens in the sequence (LLaVA / Pengi)
    "lal": {"connector": "lal"},  # every encoder as keys/values (P_l recomputed in backward: the default)
    "lal_stored": {"connector": "lal", "lal_config": {"recompute_audio": False}},  # the same, P_l's activations kept
    # one shared map plus a low-rank one per layer
    "lal_lowrank": {"connector": "lal", "lal_config": {"projection": "lowrank"}},
    # PAL's single-encoder form: `plits_config.n_summary` latent tokens through PLITS, the whole sequence through LAL
    "pal": {"connector": "pal", "plits_config": {"qformer_layers": 1}},
    "xattn": {"connector": "xattn", "xattn_config": {"every": 4}},  # gated cross-attention blocks, Flamingo style
}


def with_settings(settings: dict, **changes) -> dict:
    """PALConfig `settings` with `changes` on top (a new dict): a sub-config mapping (`lal_config`, ...) merges key by
    key into the one there, every other value replaces it."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in settings.items()}
    for key, value in changes.items():
        sub_config = key.endswith("_config") and isinstance(value, dict) and key in merged
        merged[key] = {**merged[key], **value} if sub_config else value
    return merged


def connector_preset(name: str, **sizes) -> dict:
    """The preset's PALConfig settings with `sizes` on top (`with_settings`)."""
    if name not in CONNECTOR_PRESETS:
        raise ValueError(f"unknown connector preset {name!r}; choose from {sorted(CONNECTOR_PRESETS)}.")
    return with_settings(CONNECTOR_PRESETS[name], **sizes)
