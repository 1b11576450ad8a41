"""Training plumbing shared by the SSLAM pre-training recipe and the curriculum: DeepSpeed on one CPU process or many
GPUs, the learning-rate schedule, the weight-decay policy, JSONL logs and checkpoints that survive a kill.

Checkpoints: DeepSpeed writes `<out>/checkpoints/<tag>/`; we add our own files to the tag folder, and only then
point `<out>/checkpoints/latest` at it (written atomically by rank 0). A kill during a save therefore leaves `latest`
on the previous complete checkpoint. Older tags beyond `keep_last` are deleted after `latest` moves.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import torch
from torch import nn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; one process without a launcher works too. → (rank, world)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # a plain `python` / `pal` call: one process, as DeepSpeed's launcher would set up
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def cosine_lr(step: int, peak: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to `peak`, then half a cosine down to `min_lr` at `total` (fairseq's cosine schedule)."""
    if step < warmup:
        return peak * step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """The one weight-decay policy. `decay_all=True` decays every trainable tensor (the official SSLAM optimiser's
    effective behaviour, sslam-spec §8); False exempts biases and vectors (norms, and single tokens such as CLS,
    whose shape is [1, 1, D]), as intended there."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        vector = param.numel() == param.shape[-1]  # 1-D, or a single row like the CLS token
        (decay if decay_all or not (vector or name.endswith(".bias")) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def deepspeed_config(base: str | Path | dict | None, *, micro_batch: int, grad_accum: int, precision: str,
                     zero_stage: int, grad_clip: float) -> dict:
    """A DeepSpeed JSON (file or dict) with the recipe's values written over it."""
    if isinstance(base, (str, Path)):
        path = Path(base)
        if not path.is_file():
            raise FileNotFoundError(f"DeepSpeed config {path} does not exist (see configs/deepspeed/).")
        config = json.loads(path.read_text())
    else:
        config = dict(base or {})
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision = {precision!r}: expected 'bf16' or 'fp32' (fp16 is refused on CPU).")
    config.update(
        train_micro_batch_size_per_gpu=micro_batch,
        gradient_accumulation_steps=grad_accum,
        gradient_clipping=grad_clip,
        bf16={"enabled": precision == "bf16"},
        fp16={"enabled": False},
    )
    config.setdefault("zero_optimization", {})["stage"] = zero_stage
    config.setdefault("steps_per_print", 10**9)  # we log ourselves
    return config


class JsonlLog:
    """Append-only JSON-lines log (rank 0 writes; other ranks hold a no-op), mirrored to TensorBoard when the
    `tensorboard` package is installed (numeric fields of records that carry a `step`)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.board = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.board = None

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if self.board is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.board.add_scalar(key, value, record["step"])
            self.board.flush()


def checkpoint_root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def latest_tag(out: Path) -> str | None:
    marker = checkpoint_root(out) / "latest"
    return marker.read_text().strip() if marker.is_file() else None


def save_checkpoint(engine, out: Path, step: int, extra, keep_last: int, rank: int) -> Path:
    """Engine state + `extra(tag_dir)` (our files, rank 0), then move `latest`; prune to the last `keep_last` tags."""
    root = checkpoint_root(out)
    tag = f"step-{step:08d}"
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    if rank == 0:
        extra(root / tag)
    torch.distributed.barrier()
    if rank == 0:
        tmp = root / "latest.tmp"
        tmp.write_text(tag)
        os.replace(tmp, root / "latest")
        tags = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in tags[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    torch.distributed.barrier()
    return root / tag
