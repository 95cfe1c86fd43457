"""What a training run reports, on rank 0 only: ``train.log``, a progress bar, tensorboard and ``metrics.jsonl``.

Every ``print_freq`` iterations (and after the last) the loss, learning rate, per-dataset losses, the method's
scalars, throughput and memory go to all three sinks: a log line, tensorboard scalars and one JSON object per line
in ``metrics.jsonl`` (as detectron2's ``metrics.json``; validation results are added by :meth:`write_scalars`).
Between those iterations nothing is read back from the device, so the host never waits for the GPU.
Other ranks print warnings and errors only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Mapping

import torch
from tqdm import tqdm

from mseg_semantic.atomic import DISK_FULL_ERRNOS, atomic_write_text, raise_if_disk_full

PACKAGE_LOGGER = "mseg_semantic"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
METRICS_FILE = "metrics.jsonl"


class _TqdmHandler(logging.StreamHandler):
    """Console lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _LogFileHandler(logging.FileHandler):
    """train.log. On a full disk its lines are lost, with one warning on the console instead of logging's traceback
    for every line (the run itself stops with one line at its next checkpoint, which cannot be written either)."""

    disk_full_reported = False

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            if not self.disk_full_reported:
                self.disk_full_reported = True
                sys.stderr.write(f"warning: {self.baseFilename}: {error.strerror or DISK_FULL_ERRNOS[error.errno]}; "
                                 f"its lines are lost until there is space (the console still has them)\n")
            return
        super().handleError(record)


def setup_logging(log_file: str | os.PathLike | None, is_main: bool) -> logging.Logger:
    """Console (and ``log_file`` on rank 0) handlers on the package logger; returns the trainer's logger."""
    root = logging.getLogger(PACKAGE_LOGGER)
    for handler in list(root.handlers):
        if getattr(handler, "_mseg_training", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.INFO)
    root.propagate = False
    console = _TqdmHandler()
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    console.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
    console._mseg_training = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if is_main and log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = _LogFileHandler(log_file, mode="a")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        file_handler._mseg_training = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)
    return logging.getLogger(f"{PACKAGE_LOGGER}.training")


def memory_in_use(device: torch.device) -> dict[str, float]:
    """Peak CUDA memory allocated on ``device``, or this process's resident memory on CPU (GiB)."""
    gib = float(1 << 30)
    if device.type == "cuda":
        return {"memory/max_allocated_gib": torch.cuda.max_memory_allocated(device) / gib, "memory/reserved_gib": torch.cuda.memory_reserved(device) / gib}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {"memory/peak_rss_gib": peak_kib * 1024 / gib}
    try:
        with open("/proc/self/statm") as f:
            out["memory/rss_gib"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / gib
    except (OSError, ValueError, IndexError):
        pass
    return out


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _truncated_metrics(path: Path, keep_through: int) -> None:
    """A resumed run rewrites history from its checkpoint on: drop the lines of later iterations."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["iteration"]) <= keep_through:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class TrainingReporter:
    """Counts iterations on every step (no device reads) and reports every ``print_freq`` iterations."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        enabled: bool,
        start_iteration: int,
        max_iters: int,
        crops_per_iteration: int,
        device: torch.device,
        print_freq: int = 10,
        tensorboard: bool = True,
        show_progress: bool = True,
    ):
        self.enabled = enabled
        self.max_iters = max_iters
        self.crops_per_iteration = crops_per_iteration
        self.device = device
        self.print_freq = max(1, print_freq)
        self.log = logging.getLogger(f"{PACKAGE_LOGGER}.training")
        self.writer = None
        self.bar = None
        self.metrics_path = Path(output_dir) / METRICS_FILE
        self._window_start = time.perf_counter()
        self._window_iters = 0
        self._run_start = self._window_start
        self._run_start_iter = start_iteration
        self.crops_per_second = float("nan")
        if not enabled:
            return
        _truncated_metrics(self.metrics_path, start_iteration)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=start_iteration + 1)
        if show_progress:
            self.bar = tqdm(total=max_iters, initial=start_iteration, desc="train", dynamic_ncols=True, file=sys.stderr, smoothing=0.05, mininterval=1.0)

    def is_report_iteration(self, iteration: int) -> bool:
        return iteration % self.print_freq == 0 or iteration == self.max_iters

    def tick(self) -> None:
        """One more iteration done (called every iteration; reads nothing from the device)."""
        self._window_iters += 1
        if self.bar is not None:
            self.bar.update(1)

    def write_scalars(self, iteration: int, scalars: Mapping[str, float]) -> None:
        """Scalars to tensorboard and metrics.jsonl (rank 0), e.g. validation results."""
        if not self.enabled:
            return
        finite = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.writer is not None:
            for name, value in finite.items():
                self.writer.add_scalar(name, value, iteration)
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"iteration": iteration, **finite}, sort_keys=False) + "\n")
        except OSError as error:  # a write to an open file names no file: say which one
            raise_if_disk_full(error, self.metrics_path)
            raise

    def report(self, iteration: int, loss: float, lr: float, per_dataset_loss: Mapping[str, float], scalars: Mapping[str, float]) -> None:
        """Finished iteration ``iteration`` (1-based count of optimizer steps) is a report iteration."""
        now = time.perf_counter()
        elapsed = now - self._window_start
        self.crops_per_second = self._window_iters * self.crops_per_iteration / max(elapsed, 1e-9)
        self._window_start, self._window_iters = now, 0
        if not self.enabled:
            return
        run_rate = (iteration - self._run_start_iter) / max(now - self._run_start, 1e-9)
        eta = (self.max_iters - iteration) / max(run_rate, 1e-9)
        memory = memory_in_use(self.device)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", crops_s=f"{self.crops_per_second:.1f}", refresh=False)
        per_dataset = " ".join(f"{n}={v:.3f}" for n, v in per_dataset_loss.items() if v == v)
        memory_text = " ".join(f"{k.split('/')[1]}={v:.2f}" for k, v in memory.items())
        self.log.info(
            f"iter {iteration}/{self.max_iters} loss {loss:.4f} lr {lr:.6f} crops/s {self.crops_per_second:.2f} "
            f"eta {format_duration(eta)} {memory_text} | {per_dataset}"
        )
        values = {"loss/total": loss, "lr": lr, **{f"loss/{n}": v for n, v in per_dataset_loss.items()}, **scalars,
                  "throughput/crops_per_s": self.crops_per_second, **memory}
        self.write_scalars(iteration, values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
