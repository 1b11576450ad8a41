"""PLITS: projected audio tokens take the place of the `<audio>` placeholder in the prompt (docs/design.md#plits).

The tokens then pass through every LLM layer, attention and FFN alike (the LLaVA / Pengi baseline). In PAL's
single-encoder form the same path carries `n_summary` latent summary tokens of an LAL-routed encoder
(docs/design.md#pal-hybrid).

Placeholder convention: the processor expands each prompt's `<audio>` into exactly as many placeholder positions as
the example has real PLITS tokens and marks them in `audio_token_mask`; the model writes the projected tokens there.
Streams are laid out in a fixed order: PLITS encoders in config order, then summary tokens in config order.

Notation: B batch, T sequence length, N_p PLITS tokens, d LLM hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from .clips import row_totals
from .configuration_pal import PALConfig, PLITSConfig
from .projectors import MLPProjector, QFormerProjector


def build_projector(config: PLITSConfig, encoder_dim: int, hidden_size: int,
                    num_latents: int | None = None) -> nn.Module:
    """The configured PLITS projector; `num_latents` forces a latent-query projector of that size (summaries)."""
    if num_latents is not None or config.projector == "qformer":
        return QFormerProjector(
            encoder_dim, hidden_size, num_latents or config.qformer_latents, config.qformer_layers,
            config.qformer_heads, config.qformer_dim,
        )
    return MLPProjector(encoder_dim, hidden_size, config.mlp_downsample)


def plits_token_counts(config: PALConfig, audio_masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Real PLITS tokens per example [B] from each encoder's mask [B, N_e]: what `<audio>` must expand to.

    MLP projector: ceil(n / mlp_downsample) per PLITS encoder; latent-query projector: qformer_latents; each summary
    encoder adds n_summary (all of `config.plits_config`). A row without audio (all False) gets none.
    """
    plits, counts = config.plits_config, 0
    for name in config.encoders_on("plits"):
        real = audio_masks[name].long().sum(-1)
        if plits.projector == "qformer":
            counts = counts + (real > 0).long() * plits.qformer_latents
        else:
            counts = counts + (real + plits.mlp_downsample - 1) // plits.mlp_downsample
    for name in config.summary_encoders():
        counts = counts + (audio_masks[name].long().sum(-1) > 0).long() * plits.n_summary
    return counts


class PLITSConnector(nn.Module):
    """The projectors of the PLITS-routed encoders (and PAL's summary latents): tokens for the `<audio>` positions.

    Built from its sub-config, the LLM width d and the widths `{name: D_e}` of the encoders it projects
    (`encoder_dims`) and of those that send it summary tokens (`summary_dims`)."""

    route = "plits"  # its encoders' route, its attribute on the model and its trainable group (trainable.py)

    def __init__(self, config: PLITSConfig, hidden_size: int, encoder_dims: dict[str, int],
                 summary_dims: dict[str, int]):
        super().__init__()
        self.projectors = nn.ModuleDict({name: build_projector(config, dim, hidden_size)
                                         for name, dim in encoder_dims.items()})
        self.summaries = nn.ModuleDict({name: build_projector(config, dim, hidden_size, config.n_summary)
                                        for name, dim in summary_dims.items()})
        # Audio tokens at the scale of the text embeddings around them (`match_embedding_scale` sets the gain): an
        # unnormalised projector starts several times larger (0.48 vs 0.14 RMS on SmolLM2) and its first Adam
        # updates move it further, which sent the stage-1 loss up instead of down.
        self.output_norm = nn.RMSNorm(hidden_size, eps=1e-6) if config.output_norm else None

    @torch.no_grad()
    def match_embedding_scale(self, embeddings: torch.Tensor) -> None:
        """Start the output gain at the RMS of the LLM's input embedding table [V, d]."""
        if self.output_norm is not None and not embeddings.is_meta:
            self.output_norm.weight.fill_(float(embeddings.float().pow(2).mean().sqrt()))

    def streams(self) -> list[tuple[str, nn.Module]]:
        """(encoder name, projector) in placeholder order."""
        return list(self.projectors.items()) + list(self.summaries.items())

    def forward(self, audio: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """audio {name: (tokens [B, N_e, D_e], mask [B, N_e])} → (tokens [B, N_p, d], mask [B, N_p])."""
        outputs = [proj(*audio[name]) for name, proj in self.streams()]
        tokens = torch.cat([t for t, _ in outputs], dim=1)
        if self.output_norm is not None:
            tokens = self.output_norm(tokens)
        return tokens, torch.cat([m for _, m in outputs], dim=1)


def splice_audio_tokens(
    inputs_embeds: torch.Tensor, audio_token_mask: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
    clip_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write each example's real PLITS tokens, in order, into its placeholder positions: with several clips per
    example (`clip_rows`, pal/clips.py, the clips of a row in placeholder order) the first clip's tokens fill the first
    placeholder's positions, and so on, since both are read in row-major order.

    inputs_embeds [B, T, d], audio_token_mask [B, T], tokens [C, N_p, d], mask [C, N_p], clip_rows [C] (None: C = B,
    one clip per row) → [B, T, d].
    """
    expected, found = mask.sum(-1), audio_token_mask.sum(-1)
    if clip_rows is not None:
        expected = row_totals(expected, clip_rows, found.shape[0])
    if not torch.equal(expected.cpu(), found.cpu()):
        row = int((expected != found).nonzero()[0])
        raise ValueError(
            f"example {row} has {int(found[row])} audio placeholder positions but {int(expected[row])} PLITS audio "
            "tokens: build the inputs with PALProcessor, which expands `<audio>` to the right count for this model."
        )
    real = tokens[mask].to(inputs_embeds.dtype)  # [sum of real tokens, d], row-major like masked_scatter fills
    return inputs_embeds.masked_scatter(audio_token_mask.unsqueeze(-1), real)
