"""Predicted forward FLOPs of PLITS, LAL, PAL and the cross-attention baseline (docs/design.md#flops, plus the connector
projections it leaves out): what `pal bench efficiency` prints beside each measured ratio.

Notation: n_a audio tokens, n_t text tokens, n_s PAL summary tokens, d hidden size, d_kv key/value width, d_ff FFN
width, D_e encoder width.
"""

from __future__ import annotations

from pal.configuration_pal import XAttnConfig
from pal.presets import CONNECTOR_PRESETS

XATTN_EVERY = CONNECTOR_PRESETS["xattn"]["xattn_config"]["every"]  # cross-attention: a block every k-th layer
XATTN_FFN_MULT = XAttnConfig.ffn_mult  # its FFN width over the hidden size (the default of xattn_config.ffn_mult)


def layer_flops(connector: str, n_a: int, n_t: int, d: int, d_kv: int, d_ff: int, n_s: int = 0) -> float:
    """Forward FLOPs of one audio layer (docs/design.md#flops); PAL: n_s summary tokens in sequence plus LAL audio."""
    per_token = 2 * (2 * d * d + 2 * d * d_kv + 3 * d * d_ff)
    if connector == "xattn":  # the LLM's own layer sees text only
        return n_t * per_token + 4 * n_t * n_t * d
    if connector == "plits":
        n = n_a + n_t
        return n * per_token + 4 * n * n * d
    n_q = n_t + (n_s if connector == "pal" else 0)  # in-sequence tokens: the queries
    return n_q * per_token + n_a * 4 * d * d_kv + 4 * n_q * (n_a + n_q) * d


def xattn_block_flops(n_a: int, n_t: int, d: int, ffn_mult: int = XATTN_FFN_MULT) -> float:
    """Forward FLOPs of one gated cross-attention block: k/v over the audio, q/o and the FFN over the text, and
    the text-to-audio attention (scores and weighted sum)."""
    return 2 * (2 * n_a * d * d + 2 * n_t * d * d + 2 * n_t * d * ffn_mult * d) + 4 * n_t * n_a * d


def connector_flops(variant: str, n_a: int, dims: dict, encoder_dim: int, rank: int = 64) -> float:
    """Forward FLOPs of the connector's own projections, which the per-layer formulas leave out: the PLITS MLP
    (D_e→d→d, once); LAL's P_l (D_e→d per audio layer, or for `lal_lowrank` D_e→d once plus d→r→d per layer); PAL's
    P_l plus its summary latents' input projection and K/V; the cross-attention baseline's one projection to d."""
    d, layers = dims["hidden_size"], dims["num_hidden_layers"]
    if variant == "plits":
        return 2 * n_a * (encoder_dim * d + d * d)
    if variant == "xattn":
        return 2 * n_a * encoder_dim * d
    if variant == "lal_lowrank":
        return 2 * n_a * encoder_dim * d + layers * 2 * n_a * 2 * d * rank
    flops = layers * 2 * n_a * encoder_dim * d
    if variant == "pal":
        flops += 2 * n_a * (encoder_dim * d + 2 * d * d)
    return flops


def model_flops(variant: str, n_a: int, n_t: int, dims: dict, n_s: int = 0, encoder_dim: int = 0,
                n_sup: int | None = None, rank: int = 64) -> float:
    """Forward FLOPs of every layer, plus the LM head at the `n_sup` supervised positions (every in-sequence
    position when None, as a model without `supervised_lm_loss` would), plus with `encoder_dim` the connector's own
    projections."""
    d, d_ff, layers = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    d_kv = dims["num_key_value_heads"] * d // dims["num_attention_heads"]
    connector = "lal" if variant.startswith("lal") else variant
    if n_sup is None:
        n_sup = n_a + n_t if connector == "plits" else n_t + (n_s if connector == "pal" else 0)
    flops = layers * layer_flops(connector, n_a, n_t, d, d_kv, d_ff, n_s) + 2 * d * dims["vocab_size"] * n_sup
    if connector == "xattn":
        flops += len(range(0, layers, XATTN_EVERY)) * xattn_block_flops(n_a, n_t, d)
    return flops + (connector_flops(variant, n_a, dims, encoder_dim, rank) if encoder_dim else 0)
