"""The training checkpoint: what it holds, when it is complete, how a run is restored from it.

Layout under ``<output_dir>/checkpoints/``: ``iter_XXXXXXXX.pth`` (the newest ``keep`` are kept) and ``last.pth``
(a hard link to the newest). Files are written atomically and durably (:mod:`mseg_semantic.atomic`), so a crash at
any moment leaves either the previous set or the new one; a temporary a killed run left behind is never loaded and
is removed at the next start. Discovery tries checkpoints newest first and skips one that does not load.

A checkpoint is a dict of plain Python, tensors and state dicts (``torch.load(..., weights_only=True)`` reads
it): ``model`` (this project's key names), ``optimizer``, ``scheduler``, ``scaler``, ``sampler`` and ``rng``
(one entry per rank), ``iteration``, ``world_size``, ``stage``, ``config`` (the resolved config the run used),
``meta`` (what :func:`mseg_semantic.model.save_weights` writes beside the final weights), ``extra`` (state of
the run's other parts, e.g. the best validation score so far) and ``pixel_loss`` (a stateful loss's state, e.g. the
partial-label loss's running class marginal; None for a loss without state).
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mseg_semantic import compat
from mseg_semantic.atomic import atomic_write, link_or_copy_atomic, remove_stale_temporaries
from mseg_semantic.errors import UserError
from mseg_semantic.model import unwrap_model
from mseg_semantic.distributed import DistInfo, all_gather_objects
from mseg_semantic.model.loading import TRAINING_MODEL_KEY, weights_only_problem

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_DIR",
    "FINAL_NAME",
    "LAST_NAME",
    "Checkpointer",
    "TrainingParts",
    "capture_rng_state",
    "list_checkpoints",
    "load_checkpoint",
    "restore_rng_state",
]

CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pth"
FINAL_NAME = "model_final.pth"
SUPERSEDED_PREFIX = "superseded-"  # checkpoints of a branch a resume from an older one replaced
REQUIRED_KEYS = (TRAINING_MODEL_KEY, "optimizer", "iteration")
_ITER_PATTERN = re.compile(r"^iter_(\d{8,})\.pth$")


class CheckpointError(UserError):
    """A checkpoint that cannot serve as a training checkpoint; the message names it and what to do."""


@dataclass
class TrainingParts:
    """Everything a resume restores, besides the config."""

    model: torch.nn.Module  # DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: Any  # PolyLR
    scaler: torch.amp.GradScaler | None
    loader: Any  # TrainLoader (state_dict / load_state_dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"best": {...}}: saved and restored as they are
    pixel_loss: Any = None  # a pixel loss with state (state_dict / load_state_dict), e.g. partial_label's class marginal


def iteration_file_name(iteration: int) -> str:
    return f"iter_{iteration:08d}.pth"


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the ``iter_*.pth`` files, newest first."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        match = _ITER_PATTERN.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint, validated; model keys in this project's names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {weights_only_problem(exc, path)}") from exc
    missing = set(REQUIRED_KEYS) - set(state) if isinstance(state, dict) else set(REQUIRED_KEYS)
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (missing {sorted(missing)}); to start from its weights only use weights={path}")
    state[TRAINING_MODEL_KEY] = compat.translate_state_dict(state[TRAINING_MODEL_KEY], str(path))
    if isinstance(state.get("meta"), dict):
        state["meta"] = compat.translate_meta(state["meta"])
    return state


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Python, NumPy and torch generator states of this process (CUDA too on GPUs), as plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpointer:
    """Owns the training checkpoints of one run directory: when a save is complete, which one to resume from."""

    def __init__(self, directory: str | os.PathLike, info: DistInfo, keep: int = 3, run_record: dict[str, Any] | None = None):
        self.directory = Path(directory)
        self.info = info
        self.keep = max(1, keep)
        self.run_record = dict(run_record or {})  # stage, config, meta: written into every checkpoint
        self.last_saved_iteration: int | None = None

    def capture(self, parts: TrainingParts, iteration: int) -> dict[str, Any] | None:
        """The checkpoint dict (rank 0; None elsewhere). Every rank must call it: RNG and sampler states are gathered."""
        rng_states = all_gather_objects(capture_rng_state(self.info.device), self.info)
        sampler_states = all_gather_objects(parts.loader.state_dict(), self.info)
        if not self.info.is_main:
            return None
        return {
            TRAINING_MODEL_KEY: unwrap_model(parts.model).state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            "sampler": sampler_states,
            "rng": rng_states,
            "iteration": iteration,
            "world_size": self.info.world_size,
            "extra": dict(parts.extra),
            "pixel_loss": parts.pixel_loss.state_dict() if hasattr(parts.pixel_loss, "state_dict") else None,
            **self.run_record,
        }

    def save(self, parts: TrainingParts, iteration: int) -> Path | None:
        """Write ``iter_<iteration>.pth`` (rank 0), point ``last.pth`` at it, keep the newest ``keep``. Collective."""
        state = self.capture(parts, iteration)
        self.last_saved_iteration = iteration
        if state is None:
            return None
        path = self.directory / iteration_file_name(iteration)
        atomic_write(path, lambda handle: torch.save(state, handle), durable=True)
        link_or_copy_atomic(path, self.directory / LAST_NAME)
        for _, old in list_checkpoints(self.directory)[self.keep:]:
            old.unlink(missing_ok=True)
        log.info(f"checkpoint {path}")
        return path

    def newest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint here that loads (a damaged one is skipped with a warning); None when there is none.
        Temporaries of killed writers are removed first (never those of a live process)."""
        remove_stale_temporaries(self.directory)
        candidates = [path for _, path in list_checkpoints(self.directory)]
        if not candidates and (self.directory / LAST_NAME).is_file():
            candidates = [self.directory / LAST_NAME]
        for path in candidates:
            try:
                return path, load_checkpoint(path)
            except CheckpointError as exc:
                log.warning("skipping unreadable checkpoint: %s", exc)
        return None

    def set_aside_newer(self, iteration: int) -> Path | None:
        """A resume at ``iteration`` replaces what came after it: checkpoints of later iterations (a branch the user
        rolled back from, e.g. after a non-finite loss) would otherwise be resumed from by the next plain rerun and
        would make every new save look old to the pruning. They are moved, never deleted, into
        ``superseded-<time>/``, and ``last.pth`` points at the newest checkpoint left. Rank 0; returns the folder."""
        newer = [path for number, path in list_checkpoints(self.directory) if number > iteration]
        if not self.info.is_main or not newer:
            return None
        folder = Path(tempfile.mkdtemp(prefix=f"{SUPERSEDED_PREFIX}{datetime.datetime.now():%Y%m%d-%H%M%S}-", dir=self.directory))
        for path in newer:
            os.replace(path, folder / path.name)
        last = self.directory / LAST_NAME
        remaining = list_checkpoints(self.directory)
        if remaining:
            link_or_copy_atomic(remaining[0][1], last)
        elif last.is_file():
            os.replace(last, folder / LAST_NAME)
        log.warning(f"resuming at iteration {iteration}: the checkpoints of later iterations here ({', '.join(p.name for p in newer)}) "
                    f"belong to the run this resume replaces; moved to {folder} (delete it when you no longer need them)")
        return folder

    def restore(self, parts: TrainingParts, state: dict[str, Any], max_iters: int, schedule: dict[str, float]) -> int:
        """Load ``state`` into ``parts``; returns the iteration to continue from.

        ``schedule``: this run's ``base_lr``, ``power``, ``momentum`` and ``weight_decay``. They take effect from the
        resumed iteration on (the poly curve is a closed form of the iteration, so a changed ``base_lr`` or
        ``max_iters`` gives the curve of the new values from here), instead of the values the checkpoint was
        written with. Each parameter group keeps its own relation to them, as this run built it
        (:func:`mseg_semantic.training.optim.parameter_groups`): its base is ``base_lr * lr_scale`` and its weight
        decay ``weight_decay * weight_decay_scale`` (layer decay; no decay on norms and biases); its other
        hyperparameters (AdamW's betas) are this run's too.
        """
        unwrap_model(parts.model).load_state_dict(state[TRAINING_MODEL_KEY])
        built = [{k: v for k, v in group.items() if k != "params"} for group in parts.optimizer.param_groups]
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        parts.scheduler.max_iters = max_iters
        parts.scheduler.power = schedule["power"]
        parts.scheduler.base_lrs = [schedule["base_lr"] * group.get("lr_scale", 1.0) for group in built]
        for group, lr, own in zip(parts.optimizer.param_groups, parts.scheduler.get_lr(), built):
            group.update({k: v for k, v in own.items() if k not in ("lr", "initial_lr")})
            if "momentum" in group:
                group["momentum"] = schedule["momentum"]
            group["weight_decay"] = schedule["weight_decay"] * own.get("weight_decay_scale", 1.0)
            group["initial_lr"] = schedule["base_lr"] * own.get("lr_scale", 1.0)
            if isinstance(own["lr"], torch.Tensor):  # a CUDA graph reads this very tensor
                group["lr"] = own["lr"].fill_(float(lr))
            else:
                group["lr"] = float(lr)
        if parts.scaler is not None and state.get("scaler"):
            parts.scaler.load_state_dict(state["scaler"])
        parts.extra.update(state.get("extra") or {})
        if state.get("pixel_loss") is not None and hasattr(parts.pixel_loss, "load_state_dict"):
            parts.pixel_loss.load_state_dict(state["pixel_loss"])
        info = self.info
        saved_world = int(state.get("world_size", 1))
        if saved_world == info.world_size:
            parts.loader.load_state_dict(state["sampler"][info.rank])
            restore_rng_state(state["rng"][info.rank], info.device)
        else:
            # The data stream depends on the global batch index only, so rank 0's cursor serves every rank; the
            # per-process RNG (unused by HRNet's forward pass) restarts from the seed.
            log.warning(f"checkpoint was written by {saved_world} process(es), this run has {info.world_size}: data resumes exactly, per-process RNG states are re-seeded")
            parts.loader.load_state_dict(state["sampler"][0])
        return int(state["iteration"])
