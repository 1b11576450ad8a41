"""Attention masks: the one conversion of a boolean mask (True: may attend) into the additive form that eager
attention and our LAL scores add to their logits."""

from __future__ import annotations

import torch


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype, value: torch.Tensor | float = 0.0) -> torch.Tensor:
    """allowed [...] bool → [...] of `dtype`: `value` where allowed (0, or a bias that broadcasts against `allowed`),
    the dtype's most negative finite number elsewhere, so a row with every key blocked stays finite (no NaN)."""
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, torch.as_tensor(value, dtype=dtype, device=allowed.device), blocked)
