"""Atomic writes of evaluation outputs (text, JSON, PNG)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "write_png", "temporary_sibling"]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_sibling(path: Path) -> Path:
    """An empty file beside ``path`` (same file system, so ``os.replace`` is atomic), with the mode a plain
    ``open`` would give (mkstemp makes it 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    os.chmod(tmp, _default_mode())
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_png(path: str | os.PathLike, image: np.ndarray, rgb: bool = False) -> Path:
    """A label map (uint8 / uint16, single channel) or an RGB image, written atomically."""
    if rgb:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode an array of shape {image.shape} and dtype {image.dtype} as PNG for {path}")
    return atomic_write_bytes(path, encoded.tobytes())
