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


def argv_without(option: str, argv: list[str] | None = None) -> list[str]:
    """The command line (``argv`` or ``sys.argv[1:]``) without ``option`` and its values: what a parent script passes
    on to the child process it runs for each of those values."""
    import sys

    args = list(argv if argv is not None else sys.argv[1:])
    if option in args:
        start = args.index(option)
        end = start + 1
        while end < len(args) and not args[end].startswith("--"):
            end += 1
        args = args[:start] + args[end:]
    return args


def settle_batchnorm(model) -> None:
    """BatchNorm running statistics as after training, so that folding BN into the convolutions has something to fold."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
