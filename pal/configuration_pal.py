"""PALConfig: the wrapped LLM's config, how each audio encoder is routed into it, and one sub-config per connector.

As in Hugging Face's Mllama (a text and a vision sub-config composed into one), each connector reads its own small
typed config: `plits_config` (PLITSConfig: the projectors, PAL's summary tokens), `lal_config` (LALConfig: the audio
layers and P_l) and `xattn_config` (XAttnConfig: the gated cross-attention blocks). PALConfig itself holds what is
shared: the LLM (`text_config`), the encoders' widths, the routing over the connectors and the feature norm.

Example:
    >>> from transformers import LlamaConfig
    >>> config = PALConfig(
    ...     text_config=LlamaConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4),
    ...     encoder_dims={"sslam": 768, "whisper": 512},
    ...     connector="pal", routes={"sslam": "lal", "whisper": "plits"}, lal_config={"start_layer": 1},
    ... )
    >>> config.lal_layer_indices()
    [1, 2, 3]
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from pal.common.typed_config import bounded, from_dict

# The choices of each option, named once: the fields' types below read them.
CONNECTORS = ("plits", "lal", "pal", "xattn")  # "pal": each encoder on its own route (`routes`)
# The paths an encoder can take: each is one connector module of the model, under that attribute name, built from
# the sub-config `<route>_config`, and the trainable group of its parameters.
ROUTES = tuple(c for c in CONNECTORS if c != "pal")
PROJECTORS = ("mlp", "qformer")
LAL_ROPES = ("prefix", "none")
LAL_PROJECTIONS = ("linear", "mlp", "lowrank")
LAL_AUDIO_BIASES = ("log_count", "none")
AUDIO_NORMS = ("none", "standardize")
# Keyword arguments that Hugging Face itself passes to every config; anything else unknown is a typo.
_HF_CONFIG_KWARGS = {
    "model_type", "name_or_path", "_name_or_path", "_commit_hash", "output_attentions", "attn_implementation",
    "experts_implementation", "torch_dtype", "num_labels", "per_layer_config",
}


def _check_layers(key: str, layers: list | None, num_layers: int) -> None:
    if layers is not None and (len(set(layers)) != len(layers)
                               or not all(isinstance(i, int) and 0 <= i < num_layers for i in layers)):
        raise ValueError(f"{key} = {layers}: expected distinct layer indices in [0, {num_layers - 1}].")


# ----------------------------------------------------------------------------------------------------------------------
# One sub-config per connector
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PLITSConfig:
    r"""PLITS (plits.py): encoder tokens projected into the prompt at the `<audio>` positions.

    projector: "mlp" (LLaVA-style two-layer MLP) or "qformer" (latent queries cross-attending to the encoder tokens).
    mlp_downsample: the MLP projector concatenates this many consecutive tokens before projecting (1 = none).
    qformer_latents / qformer_layers / qformer_heads / qformer_dim: the latent-query projector's size (also that of
        PAL's summary projectors); `qformer_dim=None` uses the LLM hidden size.
    n_summary: PAL's single-encoder form (connector "pal"): this many latent summary tokens per LAL-routed encoder go
        through PLITS while the full sequence goes through LAL (docs/design.md#pal-hybrid). 0 turns summaries off.
    output_norm: PLITS tokens (and summary tokens) end in an RMSNorm whose gain starts at the RMS of the LLM's own
        input embeddings, so in-sequence audio starts, and stays, at the scale of the text around it.
    """

    route: ClassVar[str] = "plits"
    projector: Literal[PROJECTORS] = "mlp"
    mlp_downsample: int = bounded(1, ge=1)
    qformer_latents: int = bounded(32, ge=1)
    qformer_layers: int = bounded(2, ge=0)
    qformer_heads: int = bounded(4, ge=1)
    qformer_dim: int | None = bounded(None, ge=1)
    n_summary: int = bounded(0, ge=0)
    output_norm: bool = True


@dataclasses.dataclass
class LALConfig:
    r"""LAL (lal_injection.py): per-layer projections of the audio become extra keys/values of the LLM's attention.

    start_layer: first LLM layer (0-indexed) that receives audio keys/values; earlier layers are the untouched LLM
        ("delayed integration", docs/design.md#audio-layers). Ignored when `layers` is given.
    layers: an explicit list of audio layers (0-indexed), instead of `start_layer`.
    rope: "prefix" rotates audio keys as if the audio stood just before the text (the PLITS layout);
        "none" leaves audio keys position-free (docs/design.md#rope).
    audio_bias: "log_count" offsets each real audio key's attention logit by -log(n_b) (n_b real audio tokens of the
        example), so a fresh connector's audio block weighs what one key would; it still disturbs the LLM where the
        keys' scores spread widely (lal_injection.py, "Start-up"). "none" is the plain formula (docs/design.md#formula).
    audio_offset: a further offset, in nats, subtracted from every real audio key's logit on top of `audio_bias`, so
        that a fresh connector starts with the LLM nearly intact (docs/findings.md); P_l learns to raise the audio's
        scores from there. 0 keeps the plain formula.
    projection: P_l, "linear" (an independent linear map of the encoder output per layer, the paper's form), "mlp" (a
        shared two-layer MLP trunk followed by one linear head per layer) or "lowrank" (one shared linear map to d
        plus a rank-`projection_rank` correction per layer: about a fifth of "linear"'s FLOPs on SmolLM2-135M with a
        ViT-B encoder; see `LALProjection`).
    projection_rank: the rank of each layer's correction when `projection="lowrank"`.
    recompute_audio: in training, keep only each audio layer's keys/values and recompute P_l, the layer's norm and its
        k/v projections in the backward pass: less peak memory for a longer step (`pal bench efficiency`'s lal
        against lal_stored; docs/efficiency.md gives both).
    max_clips: the most clips one question may hold; clip c > 1 of a question has its tokens tagged with a learned
        vector of its own before the norm and k/v projections (lal_injection.py, "Several clips"), the first clip
        none, so a single clip is the plain formula.
    """

    route: ClassVar[str] = "lal"
    start_layer: int = bounded(0, ge=0)
    layers: list[int] | None = None
    rope: Literal[LAL_ROPES] = "prefix"
    projection: Literal[LAL_PROJECTIONS] = "linear"
    projection_rank: int = bounded(64, ge=1)
    recompute_audio: bool = True
    audio_bias: Literal[LAL_AUDIO_BIASES] = "log_count"
    audio_offset: float = bounded(0.0, ge=0.0)
    max_clips: int = bounded(8, ge=1)

    def check(self, text_config) -> None:
        """Raise a ValueError if the layers do not fit the LLM."""
        num_layers = text_config.num_hidden_layers
        _check_layers("lal_config.layers", self.layers, num_layers)
        if self.layers is None and self.start_layer > num_layers:
            # == num_layers is the explicit "no audio layer" edge (the LAL route is then the bare LLM); past it: a typo
            raise ValueError(f"lal_config.start_layer = {self.start_layer}: the LLM has {num_layers} layers; expected "
                             f"0..{num_layers - 1}.")

    def layer_indices(self, num_layers: int) -> list[int]:
        """The audio layers of an LLM with `num_layers` layers."""
        return sorted(self.layers) if self.layers is not None else list(range(self.start_layer, num_layers))


@dataclasses.dataclass
class XAttnConfig:
    r"""The gated cross-attention baseline (cross_attention.py): new blocks in front of chosen LLM layers.

    every: blocks go in front of layers 0, k, 2k, ... (Flamingo's "every k-th layer"). Ignored when `layers` is given.
    layers: an explicit list of layers (0-indexed) that get a block in front of them.
    heads: attention heads of each block (None: the LLM's own head count).
    ffn_mult: each block's FFN width as a multiple of the hidden size.
    """

    route: ClassVar[str] = "xattn"
    every: int = bounded(4, ge=1)
    layers: list[int] | None = None
    heads: int | None = bounded(None, ge=1)
    ffn_mult: int = bounded(4, ge=1)

    def check(self, text_config) -> None:
        """Raise a ValueError if the layers or heads do not fit the LLM."""
        _check_layers("xattn_config.layers", self.layers, text_config.num_hidden_layers)
        if self.heads is not None and text_config.hidden_size % self.heads:
            raise ValueError(f"xattn_config.heads = {self.heads}: expected a divisor of the hidden size "
                             f"{text_config.hidden_size}.")

    def layer_indices(self, num_layers: int) -> list[int]:
        """The layers with a block in front, in an LLM with `num_layers` layers."""
        return sorted(self.layers) if self.layers is not None else list(range(0, num_layers, self.every))


SUB_CONFIGS = {cls.route: cls for cls in (PLITSConfig, LALConfig, XAttnConfig)}  # route → its connector's config

def _sub_config(route: str, value):
    """A sub-config from what PALConfig was given: an instance, a mapping (checked: unknown keys, types, bounds,
    choices) or None (the defaults)."""
    cls = SUB_CONFIGS[route]
    if isinstance(value, cls):
        return dataclasses.replace(value)  # a copy: two configs never share one
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{route}_config = {value!r}: expected a mapping of {cls.__name__} settings.")
    return from_dict(cls, value or {}, where=f"{route}_config")


# ----------------------------------------------------------------------------------------------------------------------
# The composite config
# ----------------------------------------------------------------------------------------------------------------------


@strict
class PALConfig(PreTrainedConfig):
    r"""
    text_config: the wrapped causal LM's config (Llama, Qwen2 or Mistral family).
    encoder_dims: `{encoder name: D_e}`, the width of each encoder's output tokens, in a fixed order.
    connector: "plits" routes every encoder through PLITS, "lal" every encoder through LAL, "xattn" every encoder
        through gated cross-attention blocks (the Flamingo-style baseline), "pal" follows `routes` and/or
        `plits_config.n_summary` (docs/design.md#pal-hybrid).
    routes: for "pal", `{encoder name: "plits" | "lal" | "xattn"}`; every encoder must be named.
    plits_config / lal_config / xattn_config: each connector's own settings (PLITSConfig, LALConfig, XAttnConfig
        above), given as a mapping or an instance; a connector no encoder takes keeps its defaults unused.
    audio_norm: "standardize" subtracts each encoder's training-set mean at every token position and divides by the
        per-channel std before any connector (`audio_norm.py`: frozen encoders' outputs are mostly the same for every
        clip, and a connector trained on them raw can learn to ignore them); "none" passes the features as they are.
        The statistics are fitted by the curriculum at the start of its first stage and saved with the model.
    audio_norm_positions: `{encoder name: P}`, the token positions whose means were fitted (set by the fit).
    audio_norm_periods: `{encoder name: W}`, the encoder's tokens per window (set by the fit): each window of a long
        recording is standardised as a one-window clip is.
    lora: PEFT LoRA settings attached to the LLM, `{"r", "alpha", "dropout", "target_modules"}`; None for none.
    """

    model_type = "pal"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    encoder_dims: dict | None = None
    connector: Literal[CONNECTORS] = "lal"
    routes: dict | None = None
    plits_config: dict | PLITSConfig | None = None
    lal_config: dict | LALConfig | None = None
    xattn_config: dict | XAttnConfig | None = None
    audio_norm: Literal[AUDIO_NORMS] = "none"
    audio_norm_positions: dict | None = None
    audio_norm_periods: dict | None = None
    lora: dict | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        unknown = sorted(k for k in kwargs if k not in _HF_CONFIG_KWARGS)
        if unknown:
            known = sorted(f for f in self.__dataclass_fields__ if not f.startswith("_"))
            raise ValueError(f"unknown PALConfig key(s) {unknown}; known keys: {known}.")
        for route in SUB_CONFIGS:
            setattr(self, f"{route}_config", _sub_config(route, getattr(self, f"{route}_config")))
        super().__post_init__(**kwargs)
        # Generation and saving look for tied embeddings on the top-level config.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.encoder_dims = dict(self.encoder_dims or {})
        self.validate_connector()

    def to_dict(self) -> dict:
        """Hugging Face's serialisation, with each sub-config as a plain mapping (config.json)."""
        output = super().to_dict()
        for route in SUB_CONFIGS:
            output[f"{route}_config"] = dataclasses.asdict(getattr(self, f"{route}_config"))
        return output

    def validate_connector(self) -> None:
        """Raise a ValueError naming the bad value and the choices."""
        for key, choices in (("connector", CONNECTORS), ("audio_norm", AUDIO_NORMS)):
            if getattr(self, key) not in choices:
                raise ValueError(f"{key} = {getattr(self, key)!r}: expected one of {choices}.")
        for name, dim in self.encoder_dims.items():
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"encoder_dims[{name!r}] = {dim!r}: expected a positive int, the encoder's width D_e.")
        if self.connector == "pal":
            routes = dict(self.routes or {})
            if not routes and self.plits_config.n_summary == 0:
                raise ValueError(
                    "connector='pal' needs `routes` ({encoder: 'plits'|'lal'}) and/or `plits_config.n_summary` > 0; "
                    "use connector='lal' or 'plits' for a single route."
                )
            unknown = sorted(set(routes) - set(self.encoder_dims))
            missing = sorted(set(self.encoder_dims) - set(routes)) if routes else []
            if unknown or missing:
                raise ValueError(
                    f"routes name encoders {unknown} that are not in encoder_dims, and leave out {missing}; "
                    f"route every encoder of {list(self.encoder_dims)} exactly once."
                )
            for name, route in routes.items():
                if route not in ROUTES:
                    raise ValueError(f"routes[{name!r}] = {route!r}: expected one of {ROUTES}.")
        elif self.routes:
            raise ValueError(f"routes are only read with connector='pal', not {self.connector!r}; drop them.")
        self.xattn_config.check(self.text_config)
        self.lal_config.check(self.text_config)

    def route_of(self, name: str) -> str:
        """Which path encoder `name` takes into the LLM: "plits", "lal" or "xattn"."""
        if self.connector == "pal":
            return (self.routes or {}).get(name, "lal")
        return self.connector

    def encoders_on(self, route: str) -> list[str]:
        """The encoders routed through `route`, in `encoder_dims` order."""
        return [name for name in self.encoder_dims if self.route_of(name) == route]

    def dims_of(self, names: list[str]) -> dict[str, int]:
        """`{name: D_e}` of the encoders `names`, in that order: what a connector is built for."""
        return {name: self.encoder_dims[name] for name in names}

    def summary_encoders(self) -> list[str]:
        """Encoders that also send `plits_config.n_summary` latent tokens through PLITS (PAL's single-encoder form)."""
        return self.encoders_on("lal") if self.connector == "pal" and self.plits_config.n_summary > 0 else []

    def lal_layer_indices(self) -> list[int]:
        """The LLM layers that receive audio keys/values (empty when nothing is routed through LAL)."""
        if not self.encoders_on("lal"):
            return []
        return self.lal_config.layer_indices(self.text_config.num_hidden_layers)

    def xattn_layer_indices(self) -> list[int]:
        """The LLM layers with a gated cross-attention block in front (empty when nothing is routed through xattn)."""
        if not self.encoders_on("xattn"):
            return []
        return self.xattn_config.layer_indices(self.text_config.num_hidden_layers)

    def has_plits_tokens(self) -> bool:
        """True when the prompt must hold an `<audio>` placeholder for in-sequence audio tokens."""
        return bool(self.encoders_on("plits") or self.summary_encoders())


# The Auto classes read a saved folder's config.json (AutoTokenizer does): they must know the model type "pal".
AutoConfig.register(PALConfig.model_type, PALConfig, exist_ok=True)

__all__ = ["LALConfig", "PALConfig", "PLITSConfig", "XAttnConfig"]
