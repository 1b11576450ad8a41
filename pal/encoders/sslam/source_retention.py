"""SSLAM stage 2: partial mixtures and the source retention loss targets (SSLAM, arXiv 2506.12222,
Algorithm 1; docs/design.md#stage-2-mixtures-and-source-retention).

Partial mixture: clip i is mixed with clip i−1 of the batch (a cyclic roll by +1) by the element-wise max of
the normalised log-mels, everywhere except two clean windows of W frames (start frames a < b, multiples of the patch
size, shared by the batch), where clip i stays clean.

Source retention: the teacher encodes each source separately. For the foreign source it sees only the
patches that were mixed in: the clean clip's tokens after patch embedding, positions, CLS and the context norm, with
the clean-window rows removed. In mixed rows the SRL target is the mean of the two sources' targets,
½(Y_i + Z_{i−1}); in clean rows it is Y_i.

Notation: B clips, T frames, M mel bins, T_p × F_p patch grid, N = T_p·F_p patches, D width.
"""

from __future__ import annotations

import random

import torch


def draw_window_starts(num_frames: int, window: int, patch: int, rng: random.Random) -> tuple[int, int]:
    """Two clean-window start frames, one draw per batch, with the official ranges.

    At T = 1024, W = 240 the official code draws a from range(0, 501, 16) and b from range(a + 240, 783, 16); in
    general a ≤ T − 2W − 44 and a + W ≤ b ≤ T − W − 2, both multiples of the patch size.
    """
    a_max, b_max = num_frames - 2 * window - 44, num_frames - window - 2
    if a_max < 0:
        raise ValueError(f"{num_frames} frames are too few for two clean windows of {window}: shorten mix_window.")
    a = rng.choice(range(0, a_max + 1, patch))
    b = rng.choice(range(a + window, b_max + 1, patch))
    return a, b


def partial_mixture(spec: torch.Tensor, starts: tuple[int, int], window: int) -> torch.Tensor:
    """spec [B, T, M] normalised log-mel → mixtures [B, T, M]: max(X_i, X_{i−1}) outside the two clean windows."""
    foreign = torch.roll(spec, shifts=1, dims=0).clone()  # foreign[i] = spec[i − 1]
    for start in starts:
        foreign[:, start : start + window] = float("-inf")
    return torch.maximum(spec, foreign)


def mixed_patch_rows(starts: tuple[int, int], window: int, patch: int, time_patches: int) -> torch.Tensor:
    """bool [T_p]: True for patch rows outside both clean windows (the rows where the foreign source is present)."""
    rows = torch.ones(time_patches, dtype=torch.bool)
    for start in starts:
        rows[start // patch : (start + window) // patch] = False
    return rows


def mixed_positions(rows: torch.Tensor, freq_patches: int) -> torch.Tensor:
    """Patch indices (ascending) of the mixed rows: the foreign pass's token order."""
    return rows.repeat_interleave(freq_patches).nonzero().flatten()


def drop_unmixed(context_tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, 1 + N, D] after the context norm → [B, 1 + N_mixed, D]: CLS plus the mixed patches (positions kept)."""
    return torch.cat([context_tokens[:, :1], context_tokens[:, 1:][:, positions]], dim=1)


def srl_targets(clean_targets: torch.Tensor, foreign_targets: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """SRL targets [B, N, D] from the clean-source targets Y [B, N, D] and the foreign targets Z [B, N_mixed, D].

    Z[j] belongs to clip j; mixture i holds clip i−1, so Z is rolled by +1 before averaging.
    """
    partner = torch.roll(foreign_targets, shifts=1, dims=0)
    target = clean_targets.clone()
    target[:, positions] = 0.5 * (clean_targets[:, positions] + partner)
    return target
