"""Training plumbing shared by the SSLAM pre-training recipe and the curriculum: DeepSpeed on one CPU process or many
GPUs, the learning-rate schedule, the weight-decay policy and JSONL logs. Checkpoints live in `checkpointing.py`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

import torch
from torch import nn

from pal.training.trackers import close_trackers, log_to_trackers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def native_bf16() -> bool:
    """Whether bf16 runs at full speed here: a CUDA GPU with bf16, or a CPU whose oneDNN has bf16 kernels (AVX-512 /
    AMX). Elsewhere torch emulates bf16 matmuls, many times slower than fp32 (docs/training.md)."""
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# What `precision: auto` resolves to, forced: the two CPU kinds we run on take different paths under "auto" (bf16 on
# AVX-512/AMX bf16, fp32 on AVX2), so the suite and CI are run both ways with this variable.
PRECISION_ENV = "PAL_PRECISION"


def auto_precision() -> str:
    """What "auto" means on this machine: $PAL_PRECISION ("bf16" or "fp32") when set, else "bf16" where bf16 is
    native (`native_bf16`), else "fp32"."""
    forced = os.environ.get(PRECISION_ENV, "").strip().lower()
    if forced in ("", "auto"):
        return "bf16" if native_bf16() else "fp32"
    if forced not in ("bf16", "fp32"):
        raise ValueError(f"${PRECISION_ENV} = {forced!r}: expected 'bf16', 'fp32' or 'auto' (or leave it unset).")
    return forced


def resolve_precision(precision: str) -> str:
    """"auto" → `auto_precision()`; "bf16" / "fp32" as given."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision = {precision!r}: expected 'auto', 'bf16' or 'fp32' (fp16 is refused on CPU).")
    return auto_precision() if precision == "auto" else precision


def machine_report() -> dict[str, str]:
    """What decides this machine's numeric path, for `pal env` and CI logs: the CPU model and its bf16/AMX flags,
    torch's kernel level, whether oneDNN runs bf16 natively, $PAL_PRECISION and what "auto" chose."""
    flags, model = set(), "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "cpu flags": " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted),
        "torch": torch.__version__,
        "torch cpu kernels": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "native bf16": "yes" if native_bf16() else "no",
        PRECISION_ENV: os.environ.get(PRECISION_ENV, "(unset)"),
        "precision auto chose": auto_precision(),
    }


def slow_bf16_note(precision: str, where: str) -> str | None:
    """A warning when a config asks for bf16 on a machine that can only emulate it, or None."""
    if precision == "bf16" and not native_bf16():
        return (f"{where}.precision = bf16, but this machine has no native bf16 (no AVX-512/AMX bf16 on the CPU): "
                "steps may be 10-50x slower than fp32. Use `precision: auto` to get bf16 only where it is fast.")
    return None


def reset_peak_memory() -> None:
    """Start a new high-water mark of this process's memory: the host's (Linux: writing 5 to /proc/self/clear_refs
    resets VmHWM) and the GPU's, so one process can measure several runs one after another."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the mark then covers the whole process
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> dict[str, float]:
    """{"host_mb": peak resident memory since `reset_peak_memory`, "gpu_mb": peak allocated by torch (CUDA only)}."""
    peak = {}
    try:
        status = Path("/proc/self/status").read_text()
        peak["host_mb"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        peak["host_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def bind_local_device() -> None:
    """Make this process's GPU the current CUDA device (LOCAL_RANK), before any model or encoder moves: `"cuda"`
    (an ensemble's `device`, NCCL's buffers) then means this rank's GPU, not every rank's cuda:0."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def setup_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed; one process without a launcher works too. → (rank, world)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # a plain `python` / `pal` call: one process, as DeepSpeed's launcher would set up
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    bind_local_device()
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
    effective behaviour, docs/design.md#optimisation); False exempts biases and vectors (norms, and single tokens such
    as CLS, whose shape is [1, 1, D]), as intended there."""
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


# Keys the recipes set themselves: a DeepSpeed file that sets them too would be silently overridden or conflict.
_RECIPE_OWNED = {"optimizer": "the stage's `optim` section", "scheduler": "the stage's `optim` section (warm-up + cosine)",
                 "fp16": "`precision` (fp16 is refused on CPU; use bf16)"}


def deepspeed_config(base: str | Path | dict | None, *, micro_batch: int, grad_accum: int, precision: str,
                     zero_stage: int | None, grad_clip: float) -> dict:
    """A DeepSpeed JSON (file or dict) with the recipe's values written over it; `precision` "auto" resolves to bf16
    where this machine runs it natively, else fp32.

    `zero_stage=None` takes the file's `zero_optimization.stage` (2 if the file has none); a stage given both in the
    recipe and in the file must agree. Errors name the file and the key.
    """
    where = f"DeepSpeed config {base}" if isinstance(base, (str, Path)) else "the DeepSpeed config"
    if isinstance(base, (str, Path)):
        path = Path(base)
        if not path.is_file():
            raise FileNotFoundError(f"DeepSpeed config {path} does not exist (pal:deepspeed/zero0.json to "
                                    "zero3.json ship with pal).")
        try:
            config = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{where} is not valid JSON ({err}).") from None
        if not isinstance(config, dict):
            raise ValueError(f"{where}: expected a JSON object of settings, got {type(config).__name__}.")
    else:
        config = dict(base or {})
    owned = sorted(set(config) & set(_RECIPE_OWNED))
    if owned:
        raise ValueError(f"{where} sets {owned}, which the recipe owns: remove them and use "
                         + "; ".join(_RECIPE_OWNED[k] for k in owned) + ".")
    precision = resolve_precision(precision)
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ValueError(f"{where}: zero_optimization = {zero!r}: expected an object.")
    in_file = zero.get("stage")
    if zero_stage is not None and in_file is not None and in_file != zero_stage:
        raise ValueError(f"zero_stage = {zero_stage} disagrees with {where}'s zero_optimization.stage = {in_file}: "
                         "drop one of them.")
    config.update(
        train_micro_batch_size_per_gpu=micro_batch,
        gradient_accumulation_steps=grad_accum,
        gradient_clipping=grad_clip,
        bf16={**config.get("bf16", {}), "enabled": precision == "bf16"},
    )
    config["zero_optimization"] = {**zero, "stage": zero_stage if zero_stage is not None else in_file if in_file
                                   is not None else 2}
    config.setdefault("zero_allow_untested_optimizer", True)  # the recipes pass torch's AdamW
    config.setdefault("steps_per_print", 10**9)  # we log ourselves
    return config


def check_deepspeed_config(config: dict, where: str) -> None:
    """Validate a merged DeepSpeed config with DeepSpeed's own parser (needs torch.distributed initialised), so a bad
    file fails before any training with the file named, not as an assert deep inside `deepspeed.initialize`."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(json.loads(json.dumps(config)))
    except Exception as err:  # pydantic ValidationError, AssertionError, ValueError: all mean a bad setting
        lines = [line for line in str(err).splitlines() if line.strip() and "errors.pydantic.dev" not in line]
        raise ValueError(f"{where} is not a valid DeepSpeed config: {' '.join(lines)[:600]}") from None


def checked_deepspeed_config(base: str | Path | dict | None, where: str, *, micro_batch: int, grad_accum: int,
                             precision: str, zero_stage: int | None, grad_clip: float) -> dict:
    """`deepspeed_config`'s merge, checked by DeepSpeed's own parser (`check_deepspeed_config`; `where` names the
    file in errors): what both recipes hand to `deepspeed_engine`."""
    config = deepspeed_config(base, micro_batch=micro_batch, grad_accum=grad_accum, precision=precision,
                              zero_stage=zero_stage, grad_clip=grad_clip)
    check_deepspeed_config(config, where)
    return config


def deepspeed_engine(model: nn.Module, config: dict, *, lr: float, betas, eps: float, weight_decay: float,
                     decay_all: bool):
    """`model` wrapped by DeepSpeed with `config`, trained by AdamW over its trainable tensors under the one
    weight-decay policy (`param_groups`) → (engine, optimizer). Both recipes set up their engine here."""
    import deepspeed

    optimizer = torch.optim.AdamW(param_groups(model, weight_decay, decay_all), lr=lr, betas=tuple(betas), eps=eps)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, optimizer


class JsonlLog:
    """Append-only JSON-lines log, the run's record of truth (rank 0 writes; other ranks hold a no-op). The numbers
    of each record that carries a `step` are copied to the experiment trackers given (`report_to`, trackers.py)."""

    def __init__(self, path: Path, enabled: bool, trackers: list | None = None):
        self.path, self.enabled, self.trackers = path, enabled, trackers or []
        self.last_step = 0
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")
        if "step" in record:
            self.last_step = max(self.last_step, record["step"])
            log_to_trackers(self.trackers, {k: v for k, v in record.items() if k != "step"}, record["step"])

    def close(self) -> None:
        """Finish the trackers' runs (the JSONL file needs nothing)."""
        close_trackers(self.trackers, self.path.parent, self.last_step)
        self.trackers = []
