"""Readers for the raw label formats, and the atomic label writer.

- id PNGs (8 or 16 bit, grey or palette: a palette PNG's pixel values are its class ids)
- colour PNGs (CamVid; Mapillary when saved as RGB): one RGB colour per class
- COCO panoptic PNG + JSON: segment id = R + 256 G + 256^2 B, its category from ``segments_info``
- Cityscapes-style polygon JSON (IDD): polygons drawn in file order, later objects on top
- PASCAL Context .mat files (``LabelMap``)
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

from mseg_semantic.atomic import renamed_into_place
from mseg_semantic.prepare.tables import IGNORE, UNKNOWN


class LabelFormatError(ValueError):
    pass


def read_label_ids(path: str | os.PathLike) -> np.ndarray:
    """A single-channel label PNG as an integer array (palette PNGs give their indices, not colours)."""
    with Image.open(path) as img:
        if img.mode in ("P", "L"):
            return np.array(img, dtype=np.uint8)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.array(img)
            if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
                raise LabelFormatError(f"{path}: label values outside 0..65535")
            return arr.astype(np.uint16)
        raise LabelFormatError(f"{path}: expected a single-channel (grey or palette) label PNG, got mode {img.mode}")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.array(img, dtype=np.uint8)


def write_label(path: str | os.PathLike, label: np.ndarray) -> None:
    """uint8 single-channel PNG, written to a temporary file and renamed into place."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label for {path} must be a 2-D uint8 array, got {label.dtype} {label.shape}")
    with renamed_into_place(path) as tmp:
        Image.fromarray(label).save(tmp, format="PNG")  # 2-D uint8 -> mode L


def apply_lut(ids: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Map ids through ``lut``; returns the uint8 label and {unknown id: pixel count} (those pixels get 255)."""
    mapped = np.take(lut, ids.astype(np.intp, copy=False))
    unknown: dict[int, int] = {}
    bad = mapped == UNKNOWN
    if bad.any():
        values, counts = np.unique(ids[bad], return_counts=True)
        unknown = {int(v): int(c) for v, c in zip(values, counts)}
        mapped = np.where(bad, IGNORE, mapped)
    return mapped.astype(np.uint8), unknown


def colors_to_ids(rgb: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Class ids of an RGB label; pixels of a colour not in ``colors`` get UNKNOWN, reported as 'R G B' -> count."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise LabelFormatError(f"expected an RGB colour label, got shape {rgb.shape}")
    keys = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    table = (colors[:, 0].astype(np.int32) << 16) | (colors[:, 1].astype(np.int32) << 8) | colors[:, 2].astype(np.int32)
    order = np.argsort(table)
    sorted_table = table[order]
    pos = np.clip(np.searchsorted(sorted_table, keys), 0, len(table) - 1)
    hit = sorted_table[pos] == keys
    ids = np.where(hit, order[pos], UNKNOWN).astype(np.int32)
    unknown: dict[str, int] = {}
    if not hit.all():
        values, counts = np.unique(keys[~hit], return_counts=True)
        unknown = {f"{v >> 16} {(v >> 8) & 255} {v & 255}": int(c) for v, c in zip(values, counts)}
    return ids, unknown


def read_palette_or_rgb_label(path: str | os.PathLike, colors: np.ndarray) -> tuple[np.ndarray, dict]:
    """Mapillary labels: palette PNG (indices are class ids) or an RGB rendering of it (decoded by colour)."""
    with Image.open(path) as img:
        mode = img.mode
        if mode in ("P", "L"):
            return np.array(img, dtype=np.uint8), {}
        rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    return colors_to_ids(rgb, colors)


# ---------------------------------------------------------------- COCO panoptic
def panoptic_segment_ids(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def coco_panoptic_categories(png_path: str | os.PathLike, segments: list[tuple[int, int]],
                             num_categories: int) -> tuple[np.ndarray, dict[str, int]]:
    """Category-id image (uint16, 255 where void) from a panoptic PNG and its ``segments_info`` (id, category).

    Problems reported: non-zero segment ids absent from segments_info, category ids >= num_categories.
    Those pixels get UNKNOWN.
    """
    seg = panoptic_segment_ids(read_rgb(png_path))
    ids, inverse = np.unique(seg, return_inverse=True)
    categories = dict(segments)
    values = np.empty(len(ids), dtype=np.int32)
    problems: dict[str, int] = {}
    counts = np.bincount(inverse.ravel(), minlength=len(ids))
    for i, sid in enumerate(ids.tolist()):
        if sid == 0:
            values[i] = IGNORE  # void
        elif sid not in categories:
            values[i] = UNKNOWN
            problems[f"segment {sid} not in segments_info"] = int(counts[i])
        elif not 0 <= categories[sid] < num_categories:
            values[i] = UNKNOWN
            problems[f"category {categories[sid]} (segment {sid})"] = int(counts[i])
        else:
            values[i] = categories[sid]
    return values[inverse].reshape(seg.shape), problems


def load_panoptic_json(path: str | os.PathLike) -> dict[str, list[tuple[int, int]]]:
    """file_name (of the PNG) -> [(segment id, category id)] from a COCO panoptic annotation JSON."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    try:
        return {a["file_name"]: [(int(s["id"]), int(s["category_id"])) for s in a["segments_info"]]
                for a in data["annotations"]}
    except (KeyError, TypeError) as exc:
        raise LabelFormatError(f"{path}: not a COCO panoptic annotation file (missing {exc})") from None


# ---------------------------------------------------------------- polygons (Cityscapes / IDD JSON)
def read_polygon_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not all(k in data for k in ("imgHeight", "imgWidth", "objects")):
        raise LabelFormatError(f"{path}: polygon JSON needs imgHeight, imgWidth and objects")
    return data


def resolve_polygon_label(label: str, name_to_id: dict[str, int]) -> int | None:
    """The class id of a polygon label; 'cargroup'-style labels fall back to the name without 'group'."""
    if label in name_to_id:
        return name_to_id[label]
    if label.endswith("group") and label[: -len("group")] in name_to_id:
        return name_to_id[label[: -len("group")]]
    return None


def rasterize_polygons(data: dict, name_to_id: dict[str, int], background: int) -> tuple[np.ndarray, Counter]:
    """Class-id image: every non-deleted polygon with >= 3 points drawn in file order (later on top).

    Polygons with an unknown label are drawn with UNKNOWN (reported as label -> count).
    """
    height, width = int(data["imgHeight"]), int(data["imgWidth"])
    canvas = Image.new("I", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    unknown: Counter = Counter()
    for obj in data["objects"]:
        polygon = obj.get("polygon") or []
        if obj.get("deleted") or len(polygon) < 3:
            continue
        value = resolve_polygon_label(str(obj.get("label")), name_to_id)
        if value is None:
            unknown[str(obj.get("label"))] += 1
            value = UNKNOWN
        draw.polygon([(float(x), float(y)) for x, y in polygon], fill=value)
    return np.array(canvas, dtype=np.int32), unknown


def polygon_mask(polygon, height: int, width: int) -> np.ndarray:
    """Boolean mask of one polygon (fill and outline), as used to locate a relabeled segment."""
    points = [(float(x), float(y)) for x, y in polygon]
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if len({y for _, y in points}) == 1:
        draw.line(points, fill=1)  # degenerate polygon: PIL fills nothing, draw its line instead
    else:
        draw.polygon(points, fill=1, outline=1)
    return np.array(mask, dtype=bool)


def polygon_object(data: dict, segment_id: int) -> dict | None:
    """The object with ``id`` == segment_id, or (no ids in the file) the segment_id-th object."""
    for index, obj in enumerate(data["objects"]):
        if obj.get("id", index) == segment_id:
            return obj
    return None


# ---------------------------------------------------------------- PASCAL Context
def read_pascal_context_mat(path: str | os.PathLike) -> np.ndarray:
    import scipy.io

    try:
        data = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise LabelFormatError(f"{path}: cannot read .mat file ({exc})") from None
    if "LabelMap" not in data:
        raise LabelFormatError(f"{path}: no 'LabelMap' variable (keys: {sorted(k for k in data if not k.startswith('__'))})")
    label = np.asarray(data["LabelMap"])
    if label.ndim != 2 or label.min(initial=0) < 0 or label.max(initial=0) > 65535:
        raise LabelFormatError(f"{path}: LabelMap must be a 2-D array of ids 0..65535")
    return label.astype(np.uint16)
