"""Inverse block masking on the patch grid (docs/design.md#inverse-block-masking): what the student sees during
pre-training.

Per mask, on the T_p × F_p grid (64 × 8 for 10 s): the keep ratio is 1 − mask_prob (0.2). Draw
int(N·(keep + adjust) / L²) random centres (duplicates allowed), keep an L × L block around each (clamped at the
edges), then force exactly int(N·keep) kept cells (102 of 512) by dropping random kept cells or adding random free
ones. Everything else is masked (410 of 512, 80.1 %). The student drops the masked tokens.
"""

from __future__ import annotations

import torch


def inverse_block_mask(
    num_masks: int,
    grid: tuple[int, int] = (64, 8),
    mask_prob: float = 0.8,
    mask_prob_adjust: float = 0.07,
    block: int = 5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """→ bool [num_masks, T_p·F_p], True = masked, each row with exactly N − int(N·(1 − mask_prob)) masked.

    Patch index n = F_p·t + f (time-major), the encoder's token order.
    """
    rows, cols = grid
    num = rows * cols
    keep_ratio = 1.0 - mask_prob
    num_keep = int(num * keep_ratio)
    num_centres = int(num * (keep_ratio + mask_prob_adjust) / (block * block))
    half = block // 2
    keep = torch.zeros(num_masks, rows, cols, dtype=torch.bool)
    centres = torch.randint(0, num, (num_masks, num_centres), generator=generator)
    for m in range(num_masks):
        for c in centres[m].tolist():
            t, f = divmod(c, cols)
            keep[m, max(0, t - half) : t - half + block, max(0, f - half) : f - half + block] = True
    keep = keep.view(num_masks, num)
    for m in range(num_masks):
        kept = int(keep[m].sum())
        if kept > num_keep:  # drop random kept cells
            idx = keep[m].nonzero().flatten()
            drop = idx[torch.randperm(len(idx), generator=generator)[: kept - num_keep]]
            keep[m, drop] = False
        elif kept < num_keep:  # add random free cells
            idx = (~keep[m]).nonzero().flatten()
            add = idx[torch.randperm(len(idx), generator=generator)[: num_keep - kept]]
            keep[m, add] = True
    return ~keep
