"""The pictures an evaluation writes beside its tables, drawn with OpenCV (no plotting library needed).

- :func:`iou_bar_chart`: one horizontal bar per class, best first, in the class's colour; absent classes listed
  at the end; the title carries both mIoU formulas.
- :func:`confusion_image`: the row-normalised confusion matrix (row = ground truth, cell = share of its pixels
  predicted as the column), white 0 to dark blue 1; extra columns for predictions outside the evaluated classes
  ('other classes') and 'unlabeled' predictions when there are any; rows without ground truth are grey.
- :func:`zero_shot_chart`: the zero-shot table as grouped bars, MSeg's formula and the other one per dataset,
  and the harmonic means.

All return RGB uint8 arrays (``write_png(path, image, rgb=True)`` writes them).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

__all__ = ["confusion_image", "iou_bar_chart", "row_normalised", "zero_shot_chart"]

FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK = (0, 0, 0)
GRID = (210, 210, 210)
NO_DATA = (200, 200, 200)
DARK_BLUE = np.array([8, 48, 107], dtype=np.float64)
LIGHT_BLUE = (158, 202, 225)


def _text(image: np.ndarray, text: str, x: int, y: int, scale: float, color=BLACK, thickness: int = 1) -> None:
    cv2.putText(image, text, (int(x), int(y)), FONT, scale, color, thickness, cv2.LINE_AA)


def _text_width(text: str, scale: float, thickness: int = 1) -> int:
    return cv2.getTextSize(text, FONT, scale, thickness)[0][0]


def _fit(text: str, width: int, scale: float) -> str:
    """``text`` cut (with '..') to fit ``width`` pixels."""
    if _text_width(text, scale) <= width:
        return text
    while text and _text_width(text + "..", scale) > width:
        text = text[:-1]
    return text + ".."


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def iou_bar_chart(title: str, class_names: Sequence[str], iou: np.ndarray, colors: np.ndarray, include: np.ndarray | None = None) -> np.ndarray:
    """Per-class IoU bars (``iou`` NaN = absent), sorted best first; ``include`` (bool per class) leaves out the rest."""
    iou = np.asarray(iou, dtype=np.float64)
    ids = [c for c in range(len(iou)) if include is None or include[c]]
    present = sorted((c for c in ids if not math.isnan(iou[c])), key=lambda c: (-iou[c], c))
    absent = [c for c in ids if math.isnan(iou[c])]
    row, name_w, bar_w, margin, top = 16, 190, 420, 10, 44
    rows = len(present) + (1 if absent else 0)
    height = top + max(rows, 1) * row + margin + 16
    width = margin + name_w + bar_w + 60
    image = np.full((height, width, 3), 255, np.uint8)
    _text(image, _fit(title, width - 2 * margin, 0.45), margin, 18, 0.45)
    x0 = margin + name_w
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):  # gridlines and their labels under the bars
        x = x0 + int(round(tick * bar_w))
        cv2.line(image, (x, top - 4), (x, top + rows * row), GRID, 1)
        _text(image, f"{int(tick * 100)}", x - 6, top + rows * row + 14, 0.35)
    _text(image, "IoU (%)", margin, top + rows * row + 14, 0.35)
    for i, c in enumerate(present):
        y = top + i * row
        _text(image, _fit(str(class_names[c]), name_w - 8, 0.38), margin, y + row - 4, 0.38)
        end = x0 + max(1, int(round(iou[c] * bar_w)))
        color = tuple(int(v) for v in np.asarray(colors)[c])
        cv2.rectangle(image, (x0, y + 2), (end, y + row - 2), color, -1)
        cv2.rectangle(image, (x0, y + 2), (end, y + row - 2), BLACK, 1)
        _text(image, _pct(iou[c]), end + 4, y + row - 4, 0.36)
    if absent:
        y = top + len(present) * row
        names = ", ".join(str(class_names[c]) for c in absent)
        _text(image, _fit(f"absent (no IoU): {names}", width - 2 * margin, 0.36), margin, y + row - 4, 0.36)
    return image


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (NaN for a row without pixels)."""
    counts = np.asarray(counts, dtype=np.float64)
    sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, counts / np.where(sums > 0, sums, 1), np.nan)


def _rotated_label(text: str, length: int, thickness: int, scale: float) -> np.ndarray:
    """``text`` written bottom-to-top in a ``length`` x ``thickness`` strip (a column header)."""
    strip = np.full((thickness, length, 3), 255, np.uint8)
    _text(strip, _fit(text, length - 4, scale), 2, thickness - max(1, (thickness - int(20 * scale)) // 2), scale)
    return np.ascontiguousarray(np.rot90(strip))


def confusion_image(title: str, class_names: Sequence[str], table: np.ndarray, include: np.ndarray | None = None) -> np.ndarray:
    """Row-normalised confusion matrix of the included classes. ``table``: K x K counts, or K x (K+1) with the
    'unlabeled' predictions in the last column."""
    table = np.asarray(table, dtype=np.float64)
    k = table.shape[0]
    ids = [c for c in range(k) if include is None or include[c]]
    counts = table[np.ix_(ids, ids)]
    columns = [str(class_names[c]) for c in ids]
    extra = []
    outside = table[ids][:, [c for c in range(k) if c not in set(ids)]].sum(axis=1)
    if outside.any():
        extra.append(("other classes", outside))
    if table.shape[1] > k and table[ids, k].any():
        extra.append(("unlabeled", table[ids, k]))
    for name, column in extra:
        counts = np.concatenate([counts, column[:, None]], axis=1)
        columns.append(name)
    shares = row_normalised(counts)
    n_rows, n_cols = shares.shape
    cell = int(np.clip(720 // max(n_cols, n_rows, 1), 3, 24))
    labelled = cell >= 8
    scale = min(0.4, cell / 30)
    name_w = 170 if labelled else 0
    header_h = 170 if labelled else 0
    margin, top = 10, 30
    width = margin * 2 + name_w + n_cols * cell
    height = top + header_h + n_rows * cell + margin + 18
    image = np.full((height, max(width, 420), 3), 255, np.uint8)
    _text(image, _fit(title, image.shape[1] - 2 * margin, 0.45), margin, 18, 0.45)
    x0, y0 = margin + name_w, top + header_h
    for r in range(n_rows):
        for c in range(n_cols):
            value = shares[r, c]
            color = NO_DATA if math.isnan(value) else tuple(int(v) for v in (255 * (1 - value) + DARK_BLUE * value))
            cv2.rectangle(image, (x0 + c * cell, y0 + r * cell), (x0 + (c + 1) * cell - 1, y0 + (r + 1) * cell - 1), color, -1)
            if cell >= 22 and not math.isnan(value) and value >= 0.005:
                _text(image, f"{100 * value:.0f}", x0 + c * cell + 2, y0 + r * cell + cell - 7, 0.3, (255, 255, 255) if value > 0.5 else BLACK)
    cv2.rectangle(image, (x0 - 1, y0 - 1), (x0 + n_cols * cell, y0 + n_rows * cell), BLACK, 1)
    if labelled:
        for r in range(n_rows):
            _text(image, _fit(columns[r], name_w - 8, scale), margin, y0 + r * cell + cell - max(2, (cell - 8) // 2), scale)
        for c in range(n_cols):
            strip = _rotated_label(columns[c], header_h - 4, cell, scale)
            image[top : top + strip.shape[0], x0 + c * cell : x0 + c * cell + strip.shape[1]] = strip
    _text(image, "rows: ground truth; columns: prediction; each row sums to 100%", margin, height - 6, 0.35)
    return image


def zero_shot_chart(title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], hmeans: Sequence[float | None]) -> np.ndarray:
    """Grouped bars: one group per dataset (``labels``) plus 'h. mean'; ``series``: (name, mIoU in percent or None
    for a missing dataset) per formula; ``hmeans``: each series' harmonic mean (None: incomplete)."""
    colors = [tuple(int(v) for v in DARK_BLUE), LIGHT_BLUE]
    groups = list(labels) + ["h. mean"]
    values = [list(v) + [h] for (_, v), h in zip(series, hmeans)]
    bar, gap, margin, plot_h, top = 26, 22, 40, 260, 56
    group_w = len(series) * bar + gap
    width = margin * 2 + len(groups) * group_w
    height = top + plot_h + 60
    image = np.full((height, max(width, 520), 3), 255, np.uint8)
    _text(image, _fit(title, image.shape[1] - 20, 0.5), 10, 20, 0.5)
    for i, (name, _) in enumerate(series):  # legend
        x = 10 + i * 260
        cv2.rectangle(image, (x, 30), (x + 14, 44), colors[i % 2], -1)
        _text(image, _fit(name, 236, 0.38), x + 20, 42, 0.38)
    base_y = top + plot_h
    for tick in range(0, 101, 20):
        y = base_y - int(tick / 100 * (plot_h - 20))
        cv2.line(image, (margin - 4, y), (margin + len(groups) * group_w, y), GRID, 1)
        _text(image, str(tick), 6, y + 4, 0.35)
    for g, group in enumerate(groups):
        gx = margin + g * group_w + gap // 2
        if all(column[g] is None for column in values):  # a dataset not evaluated; a harmonic mean that needs it
            _text(image, "incomplete" if g == len(groups) - 1 else "missing", gx, base_y - 6, 0.34)
        for s, column in enumerate(values):
            value = column[g]
            x = gx + s * bar
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            y = base_y - int(round(value / 100 * (plot_h - 20)))
            cv2.rectangle(image, (x, y), (x + bar - 3, base_y), colors[s % 2], -1)
            _text(image, f"{value:.1f}", x - 1, y - 4, 0.32)
        _text(image, _fit(group, group_w - 4, 0.38), gx, base_y + 18, 0.38)
    cv2.line(image, (margin - 4, base_y), (margin + len(groups) * group_w, base_y), BLACK, 1)
    return image
