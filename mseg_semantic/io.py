"""Atomic file writes: every output, report, list and marker of the project goes through these.

A file is written under a unique temporary name in its own directory (same file system, so the rename is
atomic) and renamed into place, so a reader, or a run killed mid-write, never sees a half-written file.
(Training checkpoints add an fsync: :mod:`mseg_semantic.training.checkpoint`.)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "renamed_into_place", "temporary_sibling"]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_sibling(path: str | os.PathLike) -> Path:
    """An empty, uniquely named file beside ``path`` with the mode a plain ``open`` would give (mkstemp
    makes 0600, which would leave shared data directories unreadable to others). The caller renames it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    os.chmod(tmp, _default_mode())
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2, sort_keys: bool = False) -> Path:
    """JSON with a final newline; nan/inf are refused rather than written as invalid JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


@contextlib.contextmanager
def renamed_into_place(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside ``path`` (same suffix) for writers that want a file name (ONNX, TorchScript,
    video, PIL); renamed to ``path`` when the block completes, removed when it raises."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
