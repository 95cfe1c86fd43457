"""Timing and process-memory helpers shared by the benchmark scripts (``python benchmarks/X.py`` puts this folder
on ``sys.path``)."""

from __future__ import annotations

import os
import resource
import time
from typing import Callable


def rss_mb() -> float:
    """This process's resident memory now, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step_times_ms(step: Callable[[], object], device, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``step`` after ``warmup`` untimed ones; a CUDA device is
    synchronised after each call, so that a time is the step's, not its launch's."""

    def sync() -> None:
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return times
