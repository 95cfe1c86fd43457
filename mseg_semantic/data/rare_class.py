"""Rare-class sampling (``DATA.rare_class_sampling``): DAFormer's RCS (Hoyer et al., CVPR 2022) in the mixed stream.

Statistics. Every label of a training dataset's split list is counted once, in the MODEL's label space: how many
pixels of each model class each image has. A pixel counts for its *one-hot target* under the run's converter
(``converter.label_maps``): a class whose label set has several members (ADE20K ``fence``: fence or guard rail;
Cityscapes ``rider``: bicyclist, rider_other, motorcyclist) counts for the set's first member, MSeg's one-hot
target, the member its relabeling records find most often. So a set never makes its minority members look common
(ADE20K's many fences do not make guard rails common), its majority member keeps the pixels it has in expectation,
and RCS draws the same images and crops whichever loss (``ce`` or ``partial_label``) trains on them. The counts
are cached beside the split list (``<list>.classstats-<key>.npz``; under ``$XDG_CACHE_HOME/mseg_semantic`` when
that folder is read-only), keyed by the list's bytes, the dataset root, the label files' sizes and modification
times, the dataset's source-id -> model-class table and the model's class names: a changed list, label file or
taxonomy/converter gets new statistics. Computing them reads each label once (threads); each rank of a first multi-GPU run computes
them alone, and the atomic writes make that safe.

Sampling. The mixing sampler still decides which dataset each row comes from (sampling weights and
``dataset_gpu_mapping`` keep their meaning); within dataset d, RCS picks class c among the classes d has (at
least ``min_pixels`` pixels in some image) with P(c) proportional to exp((1 - f_c) / T), f_c = the share of c
among the labelled pixels of the stream without RCS (sum over datasets of w_d x c's share of d's labelled pixels,
w = the normalised sampling weights), then an image of d with at least ``min_pixels`` pixels of c, uniformly.
Both draws come from (seed, row position) only, so global batch b stays a function of (seed, b) on any world size
and worker count, and a resume needs nothing new.

Crop. The augmentation's parameters are drawn as always; then a pixel of c is drawn from the source label and the
crop window's offset is redrawn uniformly among the offsets whose window holds that pixel (MSeg's crop range
otherwise). A candidate pixel that the rotation pushes off the canvas, or that the nearest-neighbour label sampling
would miss, is replaced by another; when none of a few candidates works (or the image lacks c: a replaced bad
sample) the crop stays as drawn.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mseg_semantic.atomic import DiskFullError, atomic_write_bytes
from mseg_semantic.data.lists import BadSampleError, read_label
from mseg_semantic.data.sampler import stream_rng
from mseg_semantic.data.transforms import AugmentConfig, AugmentParams, crop_to_source_matrix, scaled_size, short_side_size
from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import IGNORE_INDEX, DatasetLocation

log = logging.getLogger(__name__)

STREAM_RARE_CLASS = 5  # which class and image a row shows (sampler.py owns streams 1-4)
STATS_VERSION = 1  # bump when the counting changes
NOT_COUNTED = np.iinfo(np.int32).max  # a source id with no model class (ignore, unknown ids)
CROP_CANDIDATES = 16  # class pixels tried before the crop stays as drawn
_SEARCH_PIXELS = 1 << 16  # class pixels are looked for on a grid of about this many pixels first


@dataclass(frozen=True)
class ClassStats:
    """Pixels per (image, model class) of one split list, as sparse triples; ``labeled`` per image."""

    key: str
    image: np.ndarray  # int32
    cls: np.ndarray  # int32 model class ids
    pixels: np.ndarray  # int64
    labeled: np.ndarray  # int64 per image: pixels counted for some class
    num_classes: int

    def class_pixels(self) -> np.ndarray:
        return np.bincount(self.cls, weights=self.pixels, minlength=self.num_classes).astype(np.int64)

    def content_digest(self) -> str:
        """The counts themselves (not where the data is: a resume on another machine with the same data matches)."""
        digest = hashlib.sha256()
        for array in (self.image, self.cls, self.pixels, self.labeled):
            digest.update(np.ascontiguousarray(array, np.int64).tobytes())
        return digest.hexdigest()


def one_hot_table(converter: Any | None, dataset: str) -> np.ndarray:
    """Source label id -> the model class it counts for (int32, 256 entries; NOT_COUNTED for ignore and ids the
    dataset does not have). Without a converter the labels are already model ids."""
    table = np.full(256, NOT_COUNTED, np.int32)
    if converter is None:
        table[:IGNORE_INDEX] = np.arange(IGNORE_INDEX)
        return table
    for source, target in converter.label_maps[dataset].items():
        if source != IGNORE_INDEX and target != IGNORE_INDEX:
            table[source] = target
    return table


def _model_class_count(converter: Any | None) -> int:
    return IGNORE_INDEX if converter is None else int(converter.num_classes)


def stats_key(location: DatasetLocation, samples: Sequence[tuple[Path, Path]], table: np.ndarray, class_names: Sequence[str]) -> str:
    """What the statistics depend on (see the module docstring), as a hex digest."""
    digest = hashlib.sha256()
    digest.update(f"classstats v{STATS_VERSION}\n{location.name}\n{Path(location.root).resolve()}\n".encode())
    digest.update(Path(location.list_file).read_bytes())
    digest.update(table.tobytes())
    digest.update("\n".join(class_names).encode())
    stamps = np.array([_size_and_time(label) for _, label in samples], np.int64).reshape(-1, 2)
    digest.update(stamps.tobytes())
    return digest.hexdigest()


def _size_and_time(path: Path) -> tuple[int, int]:
    """A label file rewritten in place (same size, e.g. a relabeled PNG) gets a new modification time."""
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def cache_paths(location: DatasetLocation, key: str) -> list[Path]:
    """Where the statistics may live: beside the list first, then the user's cache folder."""
    list_file = Path(location.list_file)
    name = f"{list_file.name}.classstats-{key[:16]}.npz"
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mseg_semantic" / "classstats"
    return [list_file.parent / name, cache_root / f"{location.name}-{name}"]


def _read_cache(path: Path, key: str, num_classes: int) -> ClassStats | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return ClassStats(key, data["image"], data["cls"], data["pixels"], data["labeled"], num_classes)
    except Exception:  # absent, truncated (EOFError, BadZipFile), or another version's: counted again
        return None


def _count_image(label_path: Path, table: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, pixels) of one label file, in the model's classes."""
    return count_classes(read_label(label_path), table, num_classes)


def count_classes(label: np.ndarray, table: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, pixels) of one uint8 source label, in the model's classes (``table``: :func:`one_hot_table`)."""
    counts = np.bincount(label.ravel(), minlength=256)
    mapped = table[np.flatnonzero(counts)]
    present = np.flatnonzero(counts)[mapped != NOT_COUNTED]
    per_class = np.bincount(table[present], weights=counts[present], minlength=num_classes).astype(np.int64)
    classes = np.flatnonzero(per_class)
    return classes.astype(np.int32), per_class[classes]


def compute_stats(samples: Sequence[tuple[Path, Path]], table: np.ndarray, num_classes: int, key: str, threads: int = 1,
                  on_bad_sample: str = "error") -> ClassStats:
    """Count every label (a bad file is an error naming it; with ``on_bad_sample=skip`` the image counts nothing,
    so RCS never picks it)."""

    def count(index: int):
        try:
            return _count_image(samples[index][1], table, num_classes)
        except BadSampleError:
            if on_bad_sample == "skip":
                return np.zeros(0, np.int32), np.zeros(0, np.int64)
            raise

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(count, range(len(samples))))
    return stats_from_counts(results, num_classes, key)


def stats_from_counts(results: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int, key: str) -> ClassStats:
    """ClassStats from each image's :func:`count_classes` (in list order); labels in memory use it directly."""
    image = np.concatenate([np.full(len(c), i, np.int32) for i, (c, _) in enumerate(results)] or [np.zeros(0, np.int32)])
    cls = np.concatenate([c for c, _ in results] or [np.zeros(0, np.int32)])
    pixels = np.concatenate([p for _, p in results] or [np.zeros(0, np.int64)])
    labeled = np.array([int(p.sum()) for _, p in results], np.int64)
    return ClassStats(key, image, cls, pixels, labeled, num_classes)


def _write_cache(stats: ClassStats, paths: list[Path]) -> Path | None:
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(stats.key), image=stats.image, cls=stats.cls, pixels=stats.pixels, labeled=stats.labeled)
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return atomic_write_bytes(path, buffer.getvalue())
        except (OSError, DiskFullError) as exc:  # a cache is an optimisation: the next place, or none
            log.info("rare-class sampling: cannot cache class statistics at %s (%s)", path, exc)
    return None


def dataset_stats(location: DatasetLocation, samples: Sequence[tuple[Path, Path]], converter: Any | None, threads: int = 1,
                  on_bad_sample: str = "error") -> ClassStats:
    """The class statistics of one split list: from the cache, or counted and cached."""
    table = one_hot_table(converter, location.name)
    num_classes = _model_class_count(converter)
    names = list(converter.class_names) if converter is not None else [str(i) for i in range(num_classes)]
    key = stats_key(location, samples, table, names)
    paths = cache_paths(location, key)
    for path in paths:
        stats = _read_cache(path, key, num_classes)
        if stats is not None:
            return stats
    stats = compute_stats(samples, table, num_classes, key, threads, on_bad_sample)
    written = _write_cache(stats, paths)
    log.info("rare-class sampling: counted the classes of %s (%d images)%s", location.name, len(samples),
             f", cached in {written}" if written else "")
    return stats


def class_probabilities(frequencies: np.ndarray, temperature: float) -> np.ndarray:
    """DAFormer's P(c) proportional to exp((1 - f_c) / T), normalised (computed stably)."""
    logits = (1.0 - np.asarray(frequencies, np.float64)) / float(temperature)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


@dataclass(frozen=True)
class DatasetChoices:
    """What RCS draws from in one dataset."""

    classes: np.ndarray  # model class ids d has with >= min_pixels in some image
    probabilities: np.ndarray  # P(c) over ``classes``
    images: tuple[np.ndarray, ...]  # per class: the line indices of its images
    source_ids: tuple[np.ndarray, ...]  # per class: the source label ids that count for it (to find it in a crop)

    @functools.cached_property
    def cumulative(self) -> np.ndarray:
        return np.cumsum(self.probabilities)


class RareClassPlan:
    """Which (class, image) each row of each dataset shows, from (seed, position) only; see the module docstring."""

    def __init__(self, dataset_names: Sequence[str], stats: Sequence[ClassStats], tables: Sequence[np.ndarray],
                 dataset_weights: np.ndarray, temperature: float, min_pixels: int):
        if not temperature > 0:
            raise UserError(f"DATA.rare_class_temperature={temperature!r}: must be > 0 (DAFormer uses 0.01)")
        if int(min_pixels) < 1:
            raise UserError(f"DATA.rare_class_min_pixels={min_pixels!r}: must be an integer >= 1")
        self.dataset_names = list(dataset_names)
        self.temperature = float(temperature)
        self.min_pixels = int(min_pixels)
        num_classes = stats[0].num_classes
        weights = np.asarray(dataset_weights, np.float64) / np.sum(dataset_weights)
        self.frequencies = np.zeros(num_classes, np.float64)
        for w, s in zip(weights, stats):
            total = int(s.labeled.sum())
            if total > 0:
                self.frequencies += w * s.class_pixels() / total
        self.choices: list[DatasetChoices | None] = []
        for name, s, table in zip(self.dataset_names, stats, tables):
            enough = s.pixels >= self.min_pixels
            classes = np.unique(s.cls[enough])
            if classes.size == 0:
                log.warning("rare-class sampling: no class of %s has %d pixels in any image; its rows are drawn as without "
                            "RCS (lower DATA.rare_class_min_pixels)", name, self.min_pixels)
                self.choices.append(None)
                continue
            images = tuple(np.sort(s.image[enough & (s.cls == c)]).astype(np.int64) for c in classes)
            source_ids = tuple(np.flatnonzero(table == c).astype(np.uint8) for c in classes)
            self.choices.append(DatasetChoices(classes, class_probabilities(self.frequencies[classes], self.temperature),
                                               images, source_ids))
        # per dataset, so that a refused resume names the dataset whose labels changed
        self.stats_digests = {name: s.content_digest()[:16] for name, s in zip(self.dataset_names, stats)}

    def fingerprint(self) -> dict:
        """What must match for a saved loader state to mean the same stream (with the mixing sampler's fingerprint)."""
        return {"temperature": self.temperature, "min_pixels": self.min_pixels, "class_counts": self.stats_digests}

    def draws_from(self, dataset: int) -> bool:
        return self.choices[dataset] is not None

    def choose(self, seed: int, position: int, dataset: int) -> tuple[int, int]:
        """(model class, line index) of the row at ``position`` (a row of ``dataset``)."""
        choices = self.choices[dataset]
        rng = stream_rng(seed, STREAM_RARE_CLASS, position)
        k = min(int(np.searchsorted(choices.cumulative, rng.random() * choices.cumulative[-1], side="right")), len(choices.classes) - 1)
        images = choices.images[k]
        return int(choices.classes[k]), int(images[rng.integers(len(images))])

    def source_ids(self, dataset: int, model_class: int) -> np.ndarray:
        choices = self.choices[dataset]
        k = int(np.searchsorted(choices.classes, model_class))
        return choices.source_ids[k]


def build_rare_class_plan(locations: Sequence[DatasetLocation], samples: Sequence[Sequence[tuple[Path, Path]]],
                          converter: Any | None, dataset_weights: np.ndarray, temperature: float, min_pixels: int,
                          threads: int = 1, on_bad_sample: str = "error") -> RareClassPlan:
    stats = [dataset_stats(loc, s, converter, threads, on_bad_sample) for loc, s in zip(locations, samples)]
    tables = [one_hot_table(converter, loc.name) for loc in locations]
    return RareClassPlan([loc.name for loc in locations], stats, tables, dataset_weights, temperature, min_pixels)


def _member_table(source_ids: np.ndarray) -> np.ndarray:
    """256 booleans: which source ids count (np.isin costs ~100 us a call, this ~2)."""
    table = np.zeros(256, bool)
    table[source_ids] = True
    return table


def _class_pixels(label: np.ndarray, source_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of up to CROP_CANDIDATES random pixels whose source id is one of ``source_ids`` (repeats
    possible): looked for on a coarse grid first (a quick pass on large labels), on every pixel when the grid misses
    the class."""
    h, w = label.shape
    stride = max(1, int(np.sqrt(h * w / _SEARCH_PIXELS)))
    for step in ((stride, 1) if stride > 1 else (1,)):
        view = label[::step, ::step]
        mask = view == source_ids[0] if len(source_ids) == 1 else _member_table(source_ids)[view]
        flat = np.flatnonzero(mask)
        if flat.size:
            rows, cols = np.divmod(flat[rng.integers(0, flat.size, min(CROP_CANDIDATES, flat.size))], view.shape[1])
            return rows * step, cols * step
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def crop_holding_class(label: np.ndarray, source_ids: np.ndarray, params: AugmentParams, cfg: AugmentConfig,
                       rng: np.random.Generator) -> AugmentParams:
    """``params`` with the crop offset redrawn so that the crop holds a pixel whose source id is in ``source_ids``
    (``params`` unchanged when no candidate pixel can be held)."""
    rows, cols = _class_pixels(label, source_ids, rng)
    if not rows.size:
        return params
    src_h, src_w = label.shape
    h2, w2 = scaled_size(*short_side_size(src_h, src_w, cfg.short_size), params.scale)
    max_top, max_left = max(h2, cfg.train_h) - cfg.train_h, max(w2, cfg.train_w) - cfg.train_w
    to_source, (top, left, bottom, right) = crop_to_source_matrix(src_h, src_w, params, cfg)
    (a, b, tx), (c, d, ty) = to_source[:2].tolist()
    det = a * d - b * c
    is_class = _member_table(source_ids).tolist()
    for row, col in zip(rows.tolist(), cols.tolist()):  # scalar Python: far cheaper than numpy on 16 numbers
        # the window pixel (at the drawn offset) the candidate falls in, rounded as the nearest-neighbour warp rounds
        x = math.floor((d * (col - tx) - b * (row - ty)) / det + 0.5)
        y = math.floor((a * (row - ty) - c * (col - tx)) / det + 0.5)
        if not (left <= x < right and top <= y < bottom):
            continue  # rotated off the canvas
        near_x, near_y = math.floor(a * x + b * y + tx + 0.5), math.floor(c * x + d * y + ty + 0.5)
        if not (0 <= near_x < src_w and 0 <= near_y < src_h) or not is_class[int(label[near_y, near_x])]:
            continue  # the warp would read a neighbour there
        x, y = x + params.crop_left, y + params.crop_top  # at offset 0
        # window pixel (x - crop_left, y - crop_top) must lie in 0..train_w-1 / 0..train_h-1
        crop_top = int(rng.integers(max(0, y - cfg.train_h + 1), min(max_top, y) + 1))
        crop_left = int(rng.integers(max(0, x - cfg.train_w + 1), min(max_left, x) + 1))
        return replace(params, crop_top=crop_top, crop_left=crop_left)
    return params
