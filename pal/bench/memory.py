"""Measuring the memory of one step, on CPU and CUDA: the high-water mark of live tensors (`tensor_peak_mb`,
`StepMemory` on CUDA) and of the process's resident set (`StepMemory` on CPU). Used by `pal bench efficiency` and
`pal bench curriculum`; the process-wide peak of a training run is `training.engine.peak_memory_mb`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def rss_mb() -> float:
    """The process's resident set now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _resident_follows_live_tensors() -> None:
    """Make the process's resident memory follow its live tensors: glibc's mmap threshold is fixed at 64 KiB
    (a fixed value also turns off its dynamic raise up to 32 MiB), so every tensor above it is mapped when allocated
    and unmapped when freed, and what earlier steps freed into the heap is trimmed back to the system. Without this,
    memory a warm-up step freed stays resident and a later step's peak reads too low (by a different amount for each
    variant)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_mmap_threshold = -3  # mallopt(3)
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.malloc_trim(0)


class StepMemory:
    """The high-water mark of one step above what was allocated before it: CUDA's allocator statistics on a GPU;
    on CPU the kernel's peak resident set (VmHWM, reset on entry), with resident memory made to follow live tensors
    (`_resident_follows_live_tensors`). Sampling RSS would miss short peaks; this cannot."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated() / 2**20
        else:
            from pal.training.engine import reset_peak_memory

            _resident_follows_live_tensors()
            reset_peak_memory()  # the kernel's high-water mark (VmHWM)
            self.before = rss_mb()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20 - self.before
        else:
            from pal.training.engine import peak_memory_mb

            self.peak = peak_memory_mb()["host_mb"] - self.before


def tensor_peak_mb(step) -> float:
    """The high-water mark of CPU tensor bytes allocated while `step()` runs, above what was allocated when it
    started (the CPU counterpart of `torch.cuda.max_memory_allocated`): PyTorch's profiler records every allocation
    and free of the CPU allocator with its running total ("Total Allocated" of each "[memory]" event in its trace)."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]" and e["args"]["Device Type"] == 0]
    return max([0, *totals]) / 2**20
