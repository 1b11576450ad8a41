"""The one type every encoder and the ensemble return, and the only thing `pal` knows about encoders."""

from __future__ import annotations

import torch

# {encoder name: (tokens [B, N_e, D_e], mask [B, N_e] bool, True = real token; real tokens first in each row)}
EncoderOutputs = dict[str, tuple[torch.Tensor, torch.Tensor]]


def split_windows(waveform: torch.Tensor, window: int, policy: str) -> list[torch.Tensor]:
    """A clip longer than an encoder's fixed window: its first window ("truncate") or consecutive windows ("split")."""
    if waveform.shape[-1] <= window:
        return [waveform]
    if policy == "truncate":
        return [waveform[..., :window]]
    return list(waveform.split(window, dim=-1))


def join_windows(tokens: torch.Tensor, mask: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window outputs → per-clip rows: tokens [W, N, D], mask [W, N], W_i windows per clip → (tokens [B, N_max, D],
    mask [B, N_max]), each clip's real tokens in window order, real tokens first."""
    rows = [t[m] for t, m in zip(tokens.split(counts), mask.split(counts))]  # each [n_i, D]
    longest = max(r.shape[0] for r in rows)
    out = tokens.new_zeros(len(rows), longest, tokens.shape[-1])
    out_mask = torch.zeros(len(rows), longest, dtype=torch.bool, device=tokens.device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        out_mask[i, : r.shape[0]] = True
    return out, out_mask
