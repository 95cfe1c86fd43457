"""PNG outputs of the evaluation tools, written atomically (everything else: :mod:`mseg_semantic.atomic`)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from mseg_semantic.atomic import atomic_write_bytes

__all__ = ["write_png"]


def write_png(path: str | os.PathLike, image: np.ndarray, rgb: bool = False) -> Path:
    """A label map (uint8 / uint16, single channel) or an RGB image, written atomically."""
    if rgb:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode an array of shape {image.shape} and dtype {image.dtype} as PNG for {path}")
    return atomic_write_bytes(path, encoded.tobytes())
