"""`pal train --nproc N`: the curriculum in N local processes (DeepSpeed ranks) started by torchrun.

On a GPU machine N is the number of GPUs. On a CPU it splits the cores between ranks: each rank gets cores // N
threads. Two 1-thread ranks beat one 2-thread process on 2 cores, because much of a step is Python, the optimizer and
small operators that a second thread does not speed up (measured in docs/efficiency.md). `batch_size` stays per rank:
the global batch is N · batch_size · gradient_accumulation_steps.
"""

from __future__ import annotations

import os
import subprocess
import sys


def threads_per_rank(nproc: int) -> int:
    """The cores this process may use, shared out between `nproc` ranks (at least one thread each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


def default_nproc() -> int:
    """Ranks for a local run: one per GPU; on a CPU 2 when it has 2 or more cores (measured above), else 1."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2 if threads_per_rank(1) >= 2 else 1


def launch(module: str, args: list[str], nproc: int) -> int:
    """Run `python -m MODULE ARGS` as `nproc` ranks under torchrun on this machine and wait for them. → the
    launcher's exit status. (`pal train --nproc` and `pal demo` launch `pal.curriculum`.)

    The ranks inherit the working directory (relative paths in ARGS mean what they meant here); a free rendezvous
    port is chosen (`--standalone`); OMP_NUM_THREADS is set to this process's cores // nproc unless the caller set it.
    """
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: expected a number of processes ≥ 1.")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # torchrun sets them afresh
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", module, *args]
    return subprocess.run(command, env=env, check=False).returncode
