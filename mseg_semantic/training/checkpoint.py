"""Checkpoints that are complete or absent: atomic writes, newest-first discovery, RNG state capture.

Layout under ``<output_dir>/checkpoints/``: ``iter_XXXXXXXX.pth`` (the newest ``keep`` are kept) and ``last.pth``
(a hard link to the newest). A file is written to a hidden temporary name, flushed, fsynced and then renamed,
so a crash at any moment leaves either the previous set or the new one; temporaries are never loaded and are
removed on the next start. Loading tries checkpoints newest first and skips one that does not load.

Everything stored is plain Python, tensors and state dicts, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pth"
FINAL_NAME = "model_final.pth"
_ITER_PATTERN = re.compile(r"^iter_(\d{8,})\.pth$")


def iteration_file_name(iteration: int) -> str:
    return f"iter_{iteration:08d}.pth"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def link_or_copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``dst`` becomes the same file as ``src`` (a hard link, else a copy), atomically."""
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # file systems without hard links
        shutil.copy2(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)


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


def remove_temporaries(checkpoint_dir: str | os.PathLike) -> None:
    """Delete half-written files a killed run left behind."""
    directory = Path(checkpoint_dir)
    if directory.is_dir():
        for entry in directory.glob(".*.tmp"):
            entry.unlink(missing_ok=True)


def save_checkpoint(state: dict[str, Any], checkpoint_dir: str | os.PathLike, iteration: int, keep: int = 3) -> Path:
    """Write ``iter_<iteration>.pth`` atomically, point ``last.pth`` at it, keep the newest ``keep``."""
    directory = Path(checkpoint_dir)
    path = atomic_torch_save(state, directory / iteration_file_name(iteration))
    link_or_copy_atomic(path, directory / LAST_NAME)
    for _, old in list_checkpoints(directory)[max(1, keep):]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}: {exc})") from exc
    missing = {"model", "optimizer", "iteration"} - set(state) if isinstance(state, dict) else {"model"}
    if missing:
        raise ValueError(f"{path} is not a training checkpoint (missing {sorted(missing)}); to start from its weights only use weights={path}")
    return state


def load_newest_checkpoint(checkpoint_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``checkpoint_dir`` that loads; ``None`` when there is none."""
    directory = Path(checkpoint_dir)
    candidates = [path for _, path in list_checkpoints(directory)]
    if not candidates and (directory / LAST_NAME).is_file():
        candidates = [directory / LAST_NAME]
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except ValueError as exc:
            log.warning("skipping unreadable checkpoint: %s", exc)
    return None


def save_final_weights(state_dict: dict[str, torch.Tensor], meta: dict[str, Any], path: str | os.PathLike) -> Path:
    """The weights-only model file ``{"state_dict": ..., "meta": {...}}`` that evaluation and fine-tuning read."""
    return atomic_torch_save({"state_dict": state_dict, "meta": meta}, path)


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
