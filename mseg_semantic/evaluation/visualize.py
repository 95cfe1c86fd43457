"""Colour-coded label maps, overlays and a legend of the classes present, for the demo and saved predictions,
and the PNG writer of every image the evaluation tools save (atomically).

All images are RGB uint8 ``H x W x 3`` numpy arrays; label maps are integer ``H x W`` arrays.
"""

from __future__ import annotations

from typing import Sequence

import os
from pathlib import Path

import cv2
import numpy as np

from mseg_semantic.atomic import atomic_write_bytes

__all__ = ["colorize", "overlay", "legend_panel", "compose_demo_frame", "present_classes", "write_png"]

IGNORE_COLOR = (0, 0, 0)


def colorize(label: np.ndarray, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """``label`` ids -> RGB with ``colors[id]``; ``ignore_index`` is black; any other unknown id is an error."""
    colors = np.asarray(colors, dtype=np.uint8)
    label = np.asarray(label)
    ignored = label == ignore_index
    ids = np.where(ignored, 0, label).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(colors)):
        bad = np.unique(ids[(ids < 0) | (ids >= len(colors))])[:10].tolist()
        raise ValueError(f"label ids {bad} have no colour (the palette has {len(colors)} colours)")
    out = colors[ids]
    out[ignored] = IGNORE_COLOR
    return out


def overlay(image: np.ndarray, colored: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over the image: ``(1 - alpha) * image + alpha * mask``."""
    if image.shape != colored.shape:
        raise ValueError(f"image {image.shape} and mask {colored.shape} differ in shape")
    return cv2.addWeighted(image, 1.0 - alpha, colored, alpha, 0.0)


def present_classes(label: np.ndarray, ignore_index: int = 255) -> list[int]:
    """Ids present in ``label``, most frequent first (ignore excluded)."""
    ids, counts = np.unique(np.asarray(label), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [int(ids[i]) for i in order if ids[i] != ignore_index]


def legend_panel(
    class_ids: Sequence[int],
    class_names: Sequence[str],
    colors: np.ndarray,
    height: int,
    width: int = 220,
) -> np.ndarray:
    """A white panel listing ``class_ids`` with a colour swatch and name each; rows that do not fit are
    summarised as '+N more'."""
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    row = max(12, min(24, height // max(len(class_ids), 1)))
    scale = row / 40.0
    rows_fit = max(height // row, 1)
    shown = list(class_ids)
    if len(shown) > rows_fit:
        shown = shown[: rows_fit - 1]
    for i, c in enumerate(shown):
        y = i * row
        color = tuple(int(v) for v in np.asarray(colors)[c])
        cv2.rectangle(panel, (4, y + 2), (4 + row - 4, y + row - 2), color, thickness=-1)
        cv2.rectangle(panel, (4, y + 2), (4 + row - 4, y + row - 2), (0, 0, 0), thickness=1)
        text = class_names[c] if c < len(class_names) and class_names[c] else f"id {c}"
        cv2.putText(panel, text, (row + 6, y + row - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    if len(shown) < len(class_ids):
        y = len(shown) * row
        cv2.putText(panel, f"+{len(class_ids) - len(shown)} more", (6, y + row - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def compose_demo_frame(
    image: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str],
    colors: np.ndarray,
    alpha: float = 0.5,
    legend_width: int = 220,
) -> np.ndarray:
    """``[input | colour mask | overlay | legend]`` side by side, all at the image's height."""
    colored = colorize(label, colors)
    blended = overlay(image, colored, alpha)
    legend = legend_panel(present_classes(label), class_names, colors, image.shape[0], legend_width)
    return np.concatenate([image, colored, blended, legend], axis=1)


def write_png(path: str | os.PathLike, image: np.ndarray, rgb: bool = False) -> Path:
    """A label map (uint8 / uint16, single channel) or an RGB image, written atomically."""
    if rgb:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode an array of shape {image.shape} and dtype {image.dtype} as PNG for {path}")
    return atomic_write_bytes(path, encoded.tobytes())
