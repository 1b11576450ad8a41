"""Training checkpoints that survive a kill, a full disk and a tampered run folder (both recipes use this file).

Layout of a run folder's `checkpoints/`:
    step-00000300/          DeepSpeed's engine state (trainable tensors and optimizer state only: frozen weights are
                            rebuilt from their source, so a checkpoint of a 7B LLM with LoRA stays small), then our
                            own files (safetensors + JSON), then `complete.json` listing every file and its size
    latest                  the tag of the newest complete checkpoint, moved last (atomically)

Resume reads `latest`, checks that its checkpoint is complete (every listed file present with its size), and loads it
without arbitrary unpickling: DeepSpeed's `.pt` files are read with `torch.load(weights_only=True)` and an allow-list of
the three plain data types DeepSpeed stores in them. A damaged or foreign checkpoint is reported and the newest intact
one is used instead; if none is intact, resume stops with an error rather than silently starting from step 0.

The fp32 master copy of every trainable tensor is gathered from the optimizer (`trainable_fp32_state`), whatever the
ZeRO stage (0-3) and precision, and saved as `trainable.safetensors`: the stage hand-off and exports read that file,
never DeepSpeed's pickles.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from pathlib import Path

import torch

from pal.common.safe_write import atomic_write_json, atomic_write_text, disk_errors

COMPLETE = "complete.json"
_TAG = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """No usable checkpoint where one was expected; the message says what was found and what to do."""


def checkpoint_root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def tag_step(tag: str) -> int | None:
    match = _TAG.match(tag)
    return int(match.group(1)) if match else None


def checkpoint_tags(out: Path) -> list[str]:
    """Checkpoint tags in the run folder, newest step first."""
    root = checkpoint_root(out)
    tags = [p.name for p in root.glob("step-*") if p.is_dir() and tag_step(p.name) is not None] if root.is_dir() else []
    return sorted(tags, key=tag_step, reverse=True)


# ----------------------------------------------------------------------------------------------------------------------
# Loading DeepSpeed's files without running code
# ----------------------------------------------------------------------------------------------------------------------


def _deepspeed_safe_types() -> list:
    """The non-tensor types DeepSpeed 0.19 pickles into its checkpoints: plain data, no behaviour on load."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_torch_load(path: str, map_location=None):
    """`torch.load(weights_only=True)` with DeepSpeed's own data types allowed: a planted pickle cannot run code."""
    with torch.serialization.safe_globals(_deepspeed_safe_types()):
        return torch.load(path, map_location=map_location, weights_only=True)


def use_safe_loading(engine) -> None:
    """Make the engine's checkpoint engine read `.pt` files with `safe_torch_load` (it calls weights_only=False)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    if not isinstance(engine.checkpoint_engine, TorchCheckpointEngine):
        raise ValueError(
            f"checkpoint engine {type(engine.checkpoint_engine).__name__} is not supported: remove the "
            "`checkpoint` engine settings from the DeepSpeed config (resume needs the safe torch engine)."
        )
    engine.checkpoint_engine.load = safe_torch_load


# ----------------------------------------------------------------------------------------------------------------------
# fp32 master weights, whatever the ZeRO stage
# ----------------------------------------------------------------------------------------------------------------------


def trainable_fp32_state(engine, names: list[str], rank: int) -> dict[str, torch.Tensor]:
    """The fp32 master copy of each named parameter of `engine.module` ({} on ranks other than 0).

    Every rank must call it (under ZeRO 1-3 gathering a parameter is a collective). ZeRO 1-3 and bf16 keep masters
    behind DeepSpeed's fragment API; ZeRO-0 with bf16 keeps them in the unfused optimizer's `fp32_groups`; with fp32
    and ZeRO-0 the parameter is its own master.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    params = dict(engine.module.named_parameters())
    masters = {}
    optimizer = engine.optimizer
    for low, high in zip(getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", [])):
        masters.update({id(p): m for p, m in zip(low, high)})
    state = {}
    for name in names:
        param = params[name]
        full = safe_get_full_fp32_param(param)
        if full is None:
            full = masters.get(id(param), param)
        if rank == 0:
            state[name] = full.detach().float().cpu().clone().contiguous()
    return state


# ----------------------------------------------------------------------------------------------------------------------
# Saving: everything first, `latest` last, then pruning by step
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def trainable_only_state_dict(module: torch.nn.Module):
    """While active, `module.state_dict()` leaves out every frozen parameter, tied aliases included (DeepSpeed's
    `exclude_frozen_parameters` misses a tied LM head, a whole embedding table per checkpoint)."""
    frozen = [n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad]

    def drop(_module, state_dict, prefix, _metadata):
        for name in frozen:
            state_dict.pop(prefix + name, None)

    handle = module.register_state_dict_post_hook(drop)
    try:
        yield
    finally:
        handle.remove()


def save_checkpoint(engine, out: Path, step: int, extra, keep_last: int, rank: int) -> Path:
    """Engine state + `extra(tag_dir)` (called on every rank; our files, written by rank 0) + `complete.json`, then move
    `latest`; keep the `keep_last` newest steps and drop steps past this one (an abandoned timeline). → the tag dir."""
    root = checkpoint_root(out)
    tag = f"step-{step:08d}"
    tag_dir = root / tag
    with disk_errors(tag_dir), trainable_only_state_dict(engine.module):
        engine.save_checkpoint(str(root), tag=tag, save_latest=False, exclude_frozen_parameters=True)
        extra(tag_dir)
    torch.distributed.barrier()
    if rank == 0:
        files = {str(p.relative_to(tag_dir)): p.stat().st_size for p in sorted(tag_dir.rglob("*")) if p.is_file()
                 and p.name != COMPLETE}
        atomic_write_json(tag_dir / COMPLETE, {"step": step, "files": files})
        atomic_write_text(root / "latest", tag)
        prune_checkpoints(out, step, keep_last)
    torch.distributed.barrier()
    return tag_dir


def prune_checkpoints(out: Path, step: int, keep_last: int) -> None:
    """Keep the `keep_last` newest checkpoints up to `step` (0 keeps all); remove any past `step`."""
    kept = 0
    for tag in checkpoint_tags(out):
        tag_step_ = tag_step(tag)
        if tag_step_ > step:
            shutil.rmtree(checkpoint_root(out) / tag, ignore_errors=True)
            continue
        kept += 1
        if keep_last > 0 and kept > keep_last:
            shutil.rmtree(checkpoint_root(out) / tag, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# Resuming: the newest intact checkpoint
# ----------------------------------------------------------------------------------------------------------------------


def damage(tag_dir: Path) -> str | None:
    """Why this checkpoint cannot be used (missing marker, missing or truncated file), or None if it looks intact."""
    marker = tag_dir / COMPLETE
    if not marker.is_file():
        return f"no {COMPLETE} (the save did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"{COMPLETE} is unreadable"
    for name, size in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def read_latest(out: Path) -> str | None:
    marker = checkpoint_root(out) / "latest"
    try:
        tag = marker.read_text().strip()
    except OSError:
        return None
    return tag or None


def intact_tags(out: Path) -> tuple[list[str], list[str]]:
    """(usable tags, newest first with `latest` at the front; notes on the damaged ones)."""
    latest = read_latest(out)
    order = ([latest] if latest and (checkpoint_root(out) / latest).is_dir() else []) + [
        t for t in checkpoint_tags(out) if t != latest
    ]
    if latest is not None and not (checkpoint_root(out) / latest).is_dir():
        notes = [f"`latest` names {latest!r}, which does not exist"]
    elif (checkpoint_root(out) / "latest").is_file() and latest is None:
        notes = ["`latest` is empty"]
    else:
        notes = []
    usable = []
    for tag in order:
        why = damage(checkpoint_root(out) / tag)
        if why is None:
            usable.append(tag)
        else:
            notes.append(f"{tag}: {why}")
    return usable, notes


def load_latest_checkpoint(engine, out: Path, rank: int, say=print) -> Path:
    """Load the newest intact checkpoint of run folder `out` into `engine`; → its tag folder.

    A damaged checkpoint (truncated file, missing marker, a file that is not what DeepSpeed wrote) is skipped with a
    message; CheckpointError if none is usable. Every rank must call this (loading is collective under ZeRO).
    """
    use_safe_loading(engine)
    usable, notes = intact_tags(out)
    for tag in usable:
        ok, error = True, ""
        try:
            engine.load_checkpoint(str(checkpoint_root(out)), tag=tag, load_module_strict=False)
        except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, OSError, EOFError) as err:
            ok, error = False, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        flags = torch.tensor([int(ok)])
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        if flags.item():
            if notes and rank == 0:
                say(f"resume: skipped damaged checkpoint(s) in {checkpoint_root(out)}: {'; '.join(notes)}. "
                    f"Resuming from {tag}.")
            return checkpoint_root(out) / tag
        notes.append(f"{tag}: cannot be loaded safely ({error or 'failed on another rank'})")
    raise CheckpointError(
        f"--resume: no intact checkpoint in {checkpoint_root(out)}"
        + (f" ({'; '.join(notes)})" if notes else "")
        + ". Start over with --restart, or point --out at another run."
    )


def has_checkpoints(out: Path) -> bool:
    return bool(checkpoint_tags(out)) or (checkpoint_root(out) / "latest").exists()


def clear_run(out: Path) -> None:
    """Remove a run folder's checkpoints and results (`--restart`)."""
    if Path(out).exists():
        shutil.rmtree(out)


def newest_intact(out: Path) -> Path | None:
    """The newest intact checkpoint folder of a run (for reading our own files), or None."""
    usable, _ = intact_tags(out)
    return checkpoint_root(out) / usable[0] if usable else None


def trained_steps(out: Path) -> int:
    """Optimizer steps a run has behind it: the step of its newest intact checkpoint, 0 without one."""
    newest = newest_intact(out)
    return tag_step(newest.name) if newest is not None else 0


__all__ = [
    "CheckpointError", "checkpoint_root", "checkpoint_tags", "clear_run", "has_checkpoints", "load_latest_checkpoint",
    "newest_intact", "safe_torch_load", "save_checkpoint", "trainable_fp32_state", "trained_steps",
]
