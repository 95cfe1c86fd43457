"""What a training run reports, on rank 0 only: ``train.log``, a progress bar and the tracking sinks.

Every ``print_freq`` iterations (and after the last) the loss, learning rate, per-dataset losses, the method's
scalars, throughput and memory go to a log line and to each sink of ``TRAIN.loggers`` (validation results are added
by :meth:`TrainingReporter.write_scalars`):

- ``jsonl``: one JSON object per line in ``metrics.jsonl`` (as detectron2's ``metrics.json``); a resumed run drops
  the lines after its checkpoint;
- ``tensorboard``: scalars under ``tensorboard/`` (``TRAIN.tensorboard: false``, the older switch, drops it);
- ``wandb``: a Weights & Biases run (project ``$WANDB_PROJECT``, default ``mseg_semantic``; files under the output
  directory; ``WANDB_MODE=offline`` works without an account); a resumed run continues the same run;
- ``mlflow``: an MLflow run (``$MLFLOW_TRACKING_URI``, default the SQLite file ``mlflow.db`` in the output directory,
  ``mlflow ui --backend-store-uri sqlite:///PATH/mlflow.db`` shows it; experiment ``$MLFLOW_EXPERIMENT_NAME``, default
  ``mseg_semantic``) with the config as parameters; a resumed run continues the same run.

wandb and mlflow are optional (``pip install 'mseg_semantic[tracking]'``), imported only when listed; a missing one
is a one-line error before training starts (:func:`check_loggers`). Between report iterations nothing is read back
from the device, so the host never waits for the GPU. Other ranks print warnings and errors only.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import resource
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

import torch
from tqdm import tqdm

from mseg_semantic.atomic import DISK_FULL_ERRNOS, atomic_write_text, raise_if_disk_full
from mseg_semantic.config import TRACKING_SINKS, ConfigError
from mseg_semantic.errors import UserError

PACKAGE_LOGGER = "mseg_semantic"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
METRICS_FILE = "metrics.jsonl"
DEFAULT_LOGGERS = ("tensorboard", "jsonl")
OPTIONAL_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow-skinny"}  # sink -> the package that provides it


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


class TrackingError(UserError):
    """A tracking sink could not start (its server, credentials or store): exit 2 with the backend's first line."""


def active_loggers(train: Any) -> list[str]:
    """The sinks a run writes to: ``TRAIN.loggers`` (each once), without tensorboard when ``TRAIN.tensorboard`` is false."""
    return [name for name in dict.fromkeys(train.loggers) if name != "tensorboard" or train.tensorboard]


def _optional_module(sink: str) -> ModuleType:
    try:
        return importlib.import_module(sink)
    except ImportError as error:
        raise ConfigError(f"TRAIN.loggers lists {sink} but it cannot be imported ({error}): pip install "
                          f"'mseg_semantic[tracking]' (or pip install {OPTIONAL_PACKAGES[sink]}), or drop {sink} from TRAIN.loggers") from None


def check_loggers(names: Sequence[str]) -> None:
    """Each sink known and its package importable: fails before a run starts, in one line."""
    for name in names:
        if name not in TRACKING_SINKS:
            raise ConfigError(f"TRAIN.loggers: unknown logger {name!r}; valid: {', '.join(TRACKING_SINKS)}")
        if name in OPTIONAL_PACKAGES:
            _optional_module(name)


class JsonlSink:
    """``metrics.jsonl``: one JSON object per report; a resumed run rewrites history from its checkpoint on."""

    def __init__(self, output_dir: Path, start_iteration: int):
        self.path = output_dir / METRICS_FILE
        _truncated_metrics(self.path, start_iteration)

    def log(self, iteration: int, scalars: Mapping[str, float]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"iteration": iteration, **scalars}, sort_keys=False) + "\n")
        except OSError as error:  # a write to an open file names no file: say which one
            raise_if_disk_full(error, self.path)
            raise

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, output_dir: Path, start_iteration: int):
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

        self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_iteration + 1)

    def log(self, iteration: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, iteration)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _run_id(output_dir: Path, sink: str, start_iteration: int) -> tuple[str, bool]:
    """The tracking run of this output directory: the recorded one when resuming, else a new one (recorded)."""
    record = output_dir / f".{sink}_run_id"
    if start_iteration > 0 and record.is_file() and record.read_text(encoding="utf-8").strip():
        return record.read_text(encoding="utf-8").strip(), True
    return "", False


def _record_run_id(output_dir: Path, sink: str, run_id: str) -> None:
    atomic_write_text(output_dir / f".{sink}_run_id", run_id + "\n")


class WandbSink:
    """A Weights & Biases run; step = iteration."""

    def __init__(self, output_dir: Path, start_iteration: int, run_name: str, run_config: Mapping[str, Any]):
        wandb = _optional_module("wandb")
        run_id, resumed = _run_id(output_dir, "wandb", start_iteration)
        run_id = run_id or uuid.uuid4().hex[:12]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mseg_semantic"), name=run_name, id=run_id, resume="allow",
                              dir=str(output_dir), config=dict(run_config))
        if not resumed:
            _record_run_id(output_dir, "wandb", run_id)

    def log(self, iteration: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=iteration)

    def close(self) -> None:
        self.run.finish()


_MLFLOW_KEY = re.compile(r"[^\w\-. /]")  # MLflow's metric and parameter names: letters, digits, _ - . space /


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class MlflowSink:
    """An MLflow run through ``MlflowClient`` (no process-wide active run); the config's keys as parameters."""

    def __init__(self, output_dir: Path, start_iteration: int, run_name: str, run_config: Mapping[str, Any]):
        _optional_module("mlflow")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        # MLflow 3 refuses its old file store; a SQLite file beside the run's other outputs needs no server
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output_dir.resolve() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        run_id, resumed = _run_id(output_dir, "mlflow", start_iteration)
        if not resumed:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "mseg_semantic")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            params = [Param(_MLFLOW_KEY.sub("_", k), str(v)[:500]) for k, v in _flat(run_config).items() if k != "STAGES"]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(run_id, params=params[start : start + 100])
            _record_run_id(output_dir, "mlflow", run_id)
        self.run_id = run_id

    def log(self, iteration: int, scalars: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(_MLFLOW_KEY.sub("_", k), v, now, iteration) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_sinks(names: Sequence[str], output_dir: Path, start_iteration: int, run_name: str, run_config: Mapping[str, Any]) -> list:
    """The sinks of ``names`` (``TRAIN.loggers``), opened in that order."""
    check_loggers(names)
    opened = []

    def opening(name: str, make):
        try:
            return make()
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - a tracking backend's set-up problem: the user's to fix, in one line
            for sink in opened:
                sink.close()
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TrackingError(f"TRAIN.loggers: {name} could not start ({type(error).__name__}: {first})") from error

    makers = {"jsonl": lambda: JsonlSink(output_dir, start_iteration), "tensorboard": lambda: TensorBoardSink(output_dir, start_iteration),
              "wandb": lambda: WandbSink(output_dir, start_iteration, run_name, run_config),
              "mlflow": lambda: MlflowSink(output_dir, start_iteration, run_name, run_config)}
    for name in names:
        opened.append(opening(name, makers[name]))
    return opened


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
        loggers: Sequence[str] | None = None,
        run_name: str = "",
        run_config: Mapping[str, Any] | None = None,
    ):
        """``loggers``: the sinks (``TRAIN.loggers``; default tensorboard (when ``tensorboard``) and jsonl);
        ``run_name`` / ``run_config``: what wandb and mlflow record about the run."""
        self.enabled = enabled
        self.max_iters = max_iters
        self.crops_per_iteration = crops_per_iteration
        self.device = device
        self.print_freq = max(1, print_freq)
        self.log = logging.getLogger(f"{PACKAGE_LOGGER}.training")
        self.sinks: list = []
        self.bar = None
        self.metrics_path = Path(output_dir) / METRICS_FILE
        self._window_start = time.perf_counter()
        self._window_iters = 0
        self._run_start = self._window_start
        self._run_start_iter = start_iteration
        self.crops_per_second = float("nan")
        if not enabled:
            return
        if loggers is None:
            loggers = [name for name in DEFAULT_LOGGERS if name != "tensorboard" or tensorboard]
        self.sinks = open_sinks(loggers, Path(output_dir), start_iteration, run_name, run_config or {})
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
        """Scalars to every sink (rank 0), e.g. validation results."""
        if not self.enabled:
            return
        finite = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for sink in self.sinks:
            sink.log(iteration, finite)

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
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
