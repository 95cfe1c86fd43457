"""Split lists (``rgb_relpath label_relpath`` per line) and decoding of the files they name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mseg_semantic.atomic import atomic_write_text
from mseg_semantic.errors import UserError, not_utf8_error
from mseg_semantic.taxonomy import Catalog, DatasetLocation


class BadSampleError(UserError):
    """A listed file is missing, cannot be decoded, or disagrees with its pair; the message names the file."""

    def __init__(self, path: str | Path, reason: str | None = None):
        # One argument is a whole message: how a DataLoader worker re-raises the error in the main process,
        # which keeps the exception type (a two-argument-only constructor would turn it into RuntimeError).
        super().__init__(str(path) if reason is None else f"{path}: {reason}")
        self.path = str(path) if reason is not None else None
        self.reason = reason


def read_list_file(location: DatasetLocation) -> list[tuple[Path, Path]]:
    """(image path, label path) pairs, each joined to the dataset root. Blank lines are skipped."""
    list_file = Path(location.list_file)
    if not list_file.is_file():
        raise FileNotFoundError(
            f"split list {list_file} for dataset {location.name!r} does not exist; prepare the dataset (mseg-prepare), "
            f"generate the demo world (mseg-data demo --out DIR), or point DATA.dataset_lists at the right file"
        )
    pairs = []
    try:
        text = list_file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8_error(list_file, exc, "a split list ('rgb_relpath label_relpath' per line)") from None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise UserError(f"{list_file}:{number}: expected 'rgb_relpath label_relpath' (2 fields), got {len(fields)}: {line.strip()!r}")
        pairs.append((location.root / fields[0], location.root / fields[1]))
    return pairs


def locate_and_read(catalog: Catalog, name: str, split: str, allow_empty: bool = False) -> tuple[DatasetLocation, list[tuple[Path, Path]]]:
    """:meth:`Catalog.locate` the split, then :func:`read_list_file` it; a list that names no sample is an error naming
    the file unless ``allow_empty`` (a checker reports it among its problems)."""
    location = catalog.locate(name, split)
    pairs = read_list_file(location)
    if not pairs and not allow_empty:
        raise UserError(empty_list_message(location))
    return location, pairs


def empty_list_message(location: DatasetLocation) -> str:
    return (f"split list {location.list_file} of dataset {location.name!r} names no samples (an empty file); prepare the "
            f"dataset again (mseg-prepare) or point DATA.dataset_lists at the right file")


def _read(path: Path, flags: int) -> np.ndarray:
    if path.is_dir():
        raise BadSampleError(path, "is a directory, not an image file")
    if not path.is_file():
        raise BadSampleError(path, "file does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise BadSampleError(path, "cannot be decoded as an image (corrupt or not an image file)")
    return image


def read_image_bgr(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 in OpenCV's BGR order (the training path swaps channels on the small crop)."""
    return _read(Path(path), cv2.IMREAD_COLOR)


def read_image_rgb(path: str | Path) -> np.ndarray:
    return cv2.cvtColor(read_image_bgr(path), cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """H x W uint8 label map; a colour or 16-bit PNG is an error, never silently converted."""
    label = _read(Path(path), cv2.IMREAD_UNCHANGED)
    if label.ndim != 2:
        raise BadSampleError(path, f"label must be a single-channel 8-bit PNG, got {label.shape[2]} channels (colour-coded "
                                   f"labels: `mseg-data convert` turns them into id PNGs)")
    if label.dtype != np.uint8:
        raise BadSampleError(path, f"label must be 8-bit, got {label.dtype}")
    return label


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: str | Path, label_path: str | Path) -> None:
    if image.shape[:2] != label.shape:
        raise BadSampleError(label_path, f"label size {label.shape[1]}x{label.shape[0]} differs from image {image_path} size {image.shape[1]}x{image.shape[0]}")


def read_pair(image_path: Path, label_path: Path, bgr: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Image and label of one sample, checked to have the same size."""
    image = read_image_bgr(image_path) if bgr else read_image_rgb(image_path)
    label = read_label(label_path)
    check_same_size(image, label, image_path, label_path)
    return image, label


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class SplitLists:
    """What :func:`write_split_lists` wrote and what it could not pair."""

    files: dict[str, Path]  # split -> list file
    counts: dict[str, int]  # split -> samples
    images_without_label: list[Path]
    labels_without_image: list[Path]


def write_split_lists(root: str | Path, images: str | Path, labels: str | Path, out_dir: str | Path,
                      val_fraction: float = 0.1, seed: int = 0) -> SplitLists:
    """``train.txt`` / ``val.txt`` in ``out_dir``: each image under ``root/images`` paired with the label PNG of the same
    relative path and stem under ``root/labels``, paths relative to ``root`` (the dataset's directory); a seeded
    shuffle puts ``val_fraction`` of the pairs (at least one when there are two or more) in val."""
    root = Path(root)
    image_dir, label_dir = root / images, root / labels
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder (images and labels are folders under the dataset root {root})")
    if not 0 <= val_fraction < 1:
        raise UserError(f"val fraction {val_fraction}: expected a number in [0, 1)")
    found_images = {p.relative_to(image_dir).with_suffix(""): p for p in sorted(image_dir.rglob("*"))
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    found_labels = {p.relative_to(label_dir).with_suffix(""): p for p in sorted(label_dir.rglob("*.png"))}
    keys = sorted(found_images.keys() & found_labels.keys())
    if not keys:
        raise UserError(f"no image of {image_dir} has a label PNG of the same name under {label_dir}")
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = 0 if val_fraction == 0 or len(keys) < 2 else max(1, round(val_fraction * len(keys)))
    splits = {"val": sorted(keys[i] for i in order[:n_val]), "train": sorted(keys[i] for i in order[n_val:])}
    files, counts = {}, {}
    for split, members in splits.items():
        lines = [f"{found_images[k].relative_to(root).as_posix()} {found_labels[k].relative_to(root).as_posix()}" for k in members]
        if any(len(line.split()) != 2 for line in lines):
            raise UserError(f"a path under {root} contains a space; split lists separate image and label by whitespace: rename it")
        files[split] = atomic_write_text(Path(out_dir) / f"{split}.txt", "".join(f"{line}\n" for line in lines))
        counts[split] = len(members)
    return SplitLists(files, counts, [found_images[k] for k in sorted(found_images.keys() - found_labels.keys())],
                      [found_labels[k] for k in sorted(found_labels.keys() - found_images.keys())])
