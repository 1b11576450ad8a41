"""PALConfig: the wrapped LLM's config plus how each audio encoder is connected to it.

Example:
    >>> from transformers import LlamaConfig
    >>> config = PALConfig(
    ...     text_config=LlamaConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4),
    ...     encoder_dims={"sslam": 768, "whisper": 512},
    ...     connector="pal", routes={"sslam": "lal", "whisper": "plits"}, lal_start_layer=1,
    ... )
    >>> config.lal_layer_indices()
    [1, 2, 3]
"""

from __future__ import annotations

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# The choices of each option, named once: the fields' types below and `validate_connector` read them.
CONNECTORS = ("plits", "lal", "pal", "xattn")  # "pal": each encoder on its own route (`routes`)
# The paths an encoder can take: each is one connector module of the model, under that attribute name, and the
# trainable group of its parameters.
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


@strict
class PALConfig(PreTrainedConfig):
    r"""
    text_config: the wrapped causal LM's config (Llama, Qwen2 or Mistral family).
    encoder_dims: `{encoder name: D_e}`, the width of each encoder's output tokens, in a fixed order.
    connector: "plits" routes every encoder through PLITS, "lal" every encoder through LAL, "xattn" every encoder
        through gated cross-attention blocks (the Flamingo-style baseline), "pal" follows `routes` and/or `n_summary`
        (DESIGN.md "The connectors").
    routes: for "pal", `{encoder name: "plits" | "lal" | "xattn"}`; every encoder must be named.
    projector: the PLITS projector, "mlp" (LLaVA-style two-layer MLP) or "qformer" (latent queries cross-attending
        to the encoder tokens).
    mlp_downsample: the MLP projector concatenates this many consecutive tokens before projecting (1 = none).
    qformer_latents / qformer_layers / qformer_heads / qformer_dim: the latent-query projector's size;
        `qformer_dim=None` uses the LLM hidden size.
    n_summary: PAL's single-encoder form: this many latent summary tokens per LAL-routed encoder go through PLITS
        while the full sequence goes through LAL (pal-spec §5). 0 turns summaries off.
    lal_start_layer: first LLM layer (0-indexed) that receives audio keys/values; earlier layers are the untouched
        LLM ("delayed integration", pal-spec §3 H1). Ignored when `lal_layers` is given.
    lal_layers: an explicit list of audio layers (0-indexed), instead of `lal_start_layer`.
    lal_rope: "prefix" rotates audio keys as if the audio stood just before the text (the PLITS layout, pal-spec
        §4.3 option i); "none" leaves audio keys position-free (option ii).
    lal_audio_bias: "log_count" offsets each real audio key's attention logit by -log(n_b) (n_b real audio tokens of
        the example), so an untrained connector barely disturbs the LLM (lal_injection.py, "Start-up"); "none" is
        the plain pal-spec §4.2 formula.
    plits_output_norm: PLITS tokens (and summary tokens) end in an RMSNorm whose gain starts at the RMS of the LLM's
        own input embeddings, so in-sequence audio starts, and stays, at the scale of the text around it.
    lal_projection: P_l, "linear" (an independent linear map of the encoder output per layer, the paper's form),
        "mlp" (a shared two-layer MLP trunk followed by one linear head per layer) or "lowrank" (one shared linear
        map to d plus a rank-`lal_projection_rank` correction per layer: about a fifth of "linear"'s FLOPs on
        SmolLM2-135M with a ViT-B encoder; see `LALProjection`).
    lal_projection_rank: the rank of each layer's correction when `lal_projection="lowrank"`.
    lal_recompute_audio: in training, keep only each audio layer's keys/values and recompute P_l, the layer's norm
        and its k/v projections in the backward pass (at N_a = 512 on SmolLM2: 528 instead of 730 MB of peak step
        memory for an 11 % longer step, `pal bench efficiency`'s lal vs lal_stored).
    xattn_every: gated cross-attention blocks go in front of layers 0, k, 2k, ... (Flamingo's "every k-th layer").
        Ignored when `xattn_layers` is given.
    xattn_layers: an explicit list of layers (0-indexed) that get a block in front of them.
    xattn_heads: attention heads of each block (None: the LLM's own head count); xattn_ffn_mult: its FFN width
        as a multiple of the hidden size.
    audio_norm: "standardize" subtracts each encoder's training-set mean at every token position and divides by the
        per-channel std before any connector (`audio_norm.py`: frozen encoders' outputs are mostly the same for every
        clip, and a connector trained on them raw can learn to ignore them); "none" passes the features as they are.
        The statistics are fitted by the curriculum at the start of its first stage and saved with the model.
    audio_norm_positions: `{encoder name: P}`, the token positions whose means were fitted (set by the fit).
    lora: PEFT LoRA settings attached to the LLM, `{"r", "alpha", "dropout", "target_modules"}`; None for none.
    """

    model_type = "pal"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    encoder_dims: dict | None = None
    connector: Literal[CONNECTORS] = "lal"
    routes: dict | None = None
    projector: Literal[PROJECTORS] = "mlp"
    mlp_downsample: int = 1
    qformer_latents: int = 32
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_dim: int | None = None
    n_summary: int = 0
    lal_start_layer: int = 0
    lal_layers: list | None = None
    lal_rope: Literal[LAL_ROPES] = "prefix"
    lal_projection: Literal[LAL_PROJECTIONS] = "linear"
    lal_projection_rank: int = 64
    lal_recompute_audio: bool = True
    lal_audio_bias: Literal[LAL_AUDIO_BIASES] = "log_count"
    plits_output_norm: bool = True
    xattn_every: int = 4
    xattn_layers: list | None = None
    xattn_heads: int | None = None
    xattn_ffn_mult: int = 4
    audio_norm: Literal[AUDIO_NORMS] = "none"
    audio_norm_positions: dict | None = None
    lora: dict | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        unknown = sorted(k for k in kwargs if k not in _HF_CONFIG_KWARGS)
        if unknown:
            known = sorted(f for f in self.__dataclass_fields__ if not f.startswith("_"))
            raise ValueError(f"unknown PALConfig key(s) {unknown}; known keys: {known}.")
        super().__post_init__(**kwargs)
        # Generation and saving look for tied embeddings on the top-level config.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.encoder_dims = dict(self.encoder_dims or {})
        self.validate_connector()

    def validate_connector(self) -> None:
        """Raise a ValueError naming the bad value and the choices."""
        for key, choices in (("connector", CONNECTORS), ("projector", PROJECTORS), ("lal_rope", LAL_ROPES),
                             ("lal_projection", LAL_PROJECTIONS), ("lal_audio_bias", LAL_AUDIO_BIASES),
                             ("audio_norm", AUDIO_NORMS)):
            if getattr(self, key) not in choices:
                raise ValueError(f"{key} = {getattr(self, key)!r}: expected one of {choices}.")
        if not isinstance(self.lal_projection_rank, int) or self.lal_projection_rank <= 0:
            raise ValueError(f"lal_projection_rank = {self.lal_projection_rank!r}: expected a positive int.")
        for name, dim in self.encoder_dims.items():
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"encoder_dims[{name!r}] = {dim!r}: expected a positive int, the encoder's width D_e.")
        if self.connector == "pal":
            routes = dict(self.routes or {})
            if not routes and self.n_summary == 0:
                raise ValueError(
                    "connector='pal' needs `routes` ({encoder: 'plits'|'lal'}) and/or `n_summary` > 0; "
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
        if self.mlp_downsample < 1:
            raise ValueError(f"mlp_downsample = {self.mlp_downsample}: expected an int >= 1.")
        if self.n_summary < 0:
            raise ValueError(f"n_summary = {self.n_summary}: expected an int >= 0.")
        num_layers = self.text_config.num_hidden_layers
        if self.xattn_every < 1:
            raise ValueError(f"xattn_every = {self.xattn_every}: expected an int >= 1.")
        if self.xattn_layers is not None and (
                len(set(self.xattn_layers)) != len(self.xattn_layers)
                or not all(isinstance(i, int) and 0 <= i < num_layers for i in self.xattn_layers)):
            raise ValueError(f"xattn_layers = {self.xattn_layers}: expected distinct layer indices in "
                             f"[0, {num_layers - 1}].")
        if self.xattn_heads is not None and (self.xattn_heads < 1 or self.text_config.hidden_size % self.xattn_heads):
            raise ValueError(f"xattn_heads = {self.xattn_heads}: expected a divisor of the hidden size "
                             f"{self.text_config.hidden_size}.")
        if self.lal_layers is not None:
            bad = [i for i in self.lal_layers if not isinstance(i, int) or not 0 <= i < num_layers]
            if bad or len(set(self.lal_layers)) != len(self.lal_layers):
                raise ValueError(
                    f"lal_layers = {self.lal_layers}: expected distinct layer indices in [0, {num_layers - 1}]."
                )
        elif not 0 <= self.lal_start_layer <= num_layers:
            # == num_layers is the explicit "no audio layer" edge (the LAL route is then the bare LLM); past it is a typo.
            raise ValueError(
                f"lal_start_layer = {self.lal_start_layer}: the LLM has {num_layers} layers; expected 0..{num_layers - 1}."
            )

    def route_of(self, name: str) -> str:
        """Which path encoder `name` takes into the LLM: "plits", "lal" or "xattn"."""
        if self.connector == "pal":
            return (self.routes or {}).get(name, "lal")
        return self.connector

    def encoders_on(self, route: str) -> list[str]:
        """The encoders routed through `route`, in `encoder_dims` order."""
        return [name for name in self.encoder_dims if self.route_of(name) == route]

    def summary_encoders(self) -> list[str]:
        """Encoders that also send `n_summary` latent tokens through PLITS (PAL's single-encoder form)."""
        return self.encoders_on("lal") if self.connector == "pal" and self.n_summary > 0 else []

    def lal_layer_indices(self) -> list[int]:
        """The LLM layers that receive audio keys/values (empty when nothing is routed through LAL)."""
        if not self.encoders_on("lal"):
            return []
        if self.lal_layers is not None:
            return sorted(self.lal_layers)
        return list(range(self.lal_start_layer, self.text_config.num_hidden_layers))

    def xattn_layer_indices(self) -> list[int]:
        """The LLM layers with a gated cross-attention block in front (empty when nothing is routed through xattn)."""
        if not self.encoders_on("xattn"):
            return []
        if self.xattn_layers is not None:
            return sorted(self.xattn_layers)
        return list(range(0, self.text_config.num_hidden_layers, self.xattn_every))

    def has_plits_tokens(self) -> bool:
        """True when the prompt must hold an `<audio>` placeholder for in-sequence audio tokens."""
        return bool(self.encoders_on("plits") or self.summary_encoders())


__all__ = ["PALConfig"]
