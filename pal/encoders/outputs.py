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


def pad_rows(rows: list[torch.Tensor], dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths, each [n_i, ...] → (padded [B, N_max, ...] with zeros after each row's end,
    mask [B, N_max], True = real). The one ragged-padding step of the project (tokens, waveforms, cached features)."""
    padded = torch.nn.utils.rnn.pad_sequence([r if dtype is None else r.to(dtype) for r in rows], batch_first=True)
    lengths = torch.tensor([r.shape[0] for r in rows], device=padded.device)
    return padded, torch.arange(padded.shape[1], device=padded.device) < lengths[:, None]


def join_windows(tokens: torch.Tensor, mask: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window outputs → per-clip rows: tokens [W, N, D], mask [W, N], W_i windows per clip → (tokens [B, N_max, D],
    mask [B, N_max]), each clip's real tokens in window order, real tokens first."""
    return pad_rows([t[m] for t, m in zip(tokens.split(counts), mask.split(counts))])  # rows [n_i, D]
