"""Outputs of the evaluation tools, written atomically (text and JSON: :mod:`mseg_semantic.io`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from mseg_semantic.io import atomic_write_bytes, temporary_sibling

__all__ = ["write_png", "renamed_into_place"]


def write_png(path: str | os.PathLike, image: np.ndarray, rgb: bool = False) -> Path:
    """A label map (uint8 / uint16, single channel) or an RGB image, written atomically."""
    if rgb:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode an array of shape {image.shape} and dtype {image.dtype} as PNG for {path}")
    return atomic_write_bytes(path, encoded.tobytes())


@contextlib.contextmanager
def renamed_into_place(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside ``path`` (same suffix) for writers that want a name (ONNX, TorchScript,
    video); renamed to ``path`` when the block completes, removed when it raises."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
