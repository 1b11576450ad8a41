"""The one type every encoder and the ensemble return, and the only thing `pal` knows about encoders."""

from __future__ import annotations

import torch

# {encoder name: (tokens [B, N_e, D_e], mask [B, N_e] bool, True = real token; real tokens first in each row)}
EncoderOutputs = dict[str, tuple[torch.Tensor, torch.Tensor]]
