"""The taxonomies this process knows: the built-in data files plus user files added with add_taxonomy_file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mseg_semantic.errors import UnknownNameError, did_you_mean
from mseg_semantic.taxonomy.files import (
    IGNORE_INDEX,
    Taxonomy,
    TaxonomyFileError,
    ValidationReport,
    palette,
    read_taxonomy_file,
)
from mseg_semantic.taxonomy.validation import resolve_extensions, validate_taxonomies

DATA_DIR = Path(__file__).resolve().parent / "data"
NUM_UNIVERSAL_CLASSES = 194

# MSeg's training taxonomies. MSeg also lists cityscapes-34 as unrelabeled; it is in the data (role train) but,
# as in MSeg's released models, not among the defaults.
UNRELABELED_TRAIN_DATASETS = [
    "ade20k-150", "bdd", "cityscapes-19", "coco-panoptic-133", "idd-39", "mapillary-public65", "sunrgbd-37",
]
RELABELED_TRAIN_DATASETS = [
    "ade20k-150-relabeled", "bdd-relabeled", "cityscapes-19-relabeled", "cityscapes-34-relabeled",
    "coco-panoptic-133-relabeled", "idd-39-relabeled", "mapillary-public65-relabeled", "sunrgbd-37-relabeled",
]
DEFAULT_TRAIN_DATASETS = UNRELABELED_TRAIN_DATASETS + RELABELED_TRAIN_DATASETS
# MSeg's zero-shot test datasets, in the column order of its table (VOC, PASCAL Context, CamVid, WildDash, KITTI, ScanNet)
ZERO_SHOT_DATASETS = ("voc2012", "pascal-context-60", "camvid-11", "wilddash-19", "kitti-19", "scannet-20")
DEFAULT_TEST_DATASETS = sorted(ZERO_SHOT_DATASETS)
NAIVE = "naive"

_builtin: dict[str, Taxonomy] = {}
_user: dict[str, Taxonomy] = {}
_user_files: dict[str, tuple[str | None, tuple[str, ...]]] = {}  # resolved path -> (text, names) added by add_taxonomy_files


def builtin_taxonomy_names() -> list[str]:
    return sorted(p.stem for p in DATA_DIR.glob("*.tsv"))


def taxonomy_names(role: str | None = None) -> list[str]:
    """Every known taxonomy name (built-in and added), optionally only those of one role."""
    names = builtin_taxonomy_names() + sorted(_user)
    if role is None:
        return names
    return [n for n in names if get_taxonomy(n).role == role]


def get_taxonomy(name: str) -> Taxonomy:
    if name in _user:
        return _user[name]
    if name in _builtin:
        return _builtin[name]
    path = DATA_DIR / f"{name}.tsv"
    if not path.is_file():
        known = builtin_taxonomy_names() + sorted(_user)
        raise UnknownNameError(f"unknown taxonomy {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
    blocks, report = read_taxonomy_file(path)
    report.raise_if_errors()
    if len(blocks) != 1 or blocks[0].name != name:
        report = ValidationReport()
        report.error(path, None, name, f"a built-in file must hold exactly one block named {name!r}")
        raise TaxonomyFileError(report)
    _builtin[name] = blocks[0]
    return blocks[0]


def all_taxonomies() -> dict[str, Taxonomy]:
    return {name: get_taxonomy(name) for name in taxonomy_names()}


def load_class_names(taxonomy_name: str) -> list[str]:
    """Class names of a taxonomy; list index = label id. 'naive' gives the 316 naive names ('' at 255)."""
    if taxonomy_name == NAIVE:
        return naive_class_names(UNRELABELED_TRAIN_DATASETS)
    return list(get_taxonomy(taxonomy_name).class_names)


def load_class_colors(taxonomy_name: str) -> np.ndarray:
    """(K, 3) uint8 RGB colours, index = label id (a deterministic palette where the data gives none)."""
    if taxonomy_name == NAIVE:
        return palette(len(load_class_names(NAIVE)))
    tax = get_taxonomy(taxonomy_name)
    if tax.colors is None:
        return palette(tax.num_classes)
    return tax.colors.copy()


def validate_file(path: str | os.PathLike) -> tuple[list[Taxonomy], ValidationReport]:
    """Parse and check a user file against everything already known; registers nothing. Blocks that extend
    another taxonomy come back resolved (whole)."""
    blocks, report = read_taxonomy_file(path)
    known = all_taxonomies()
    blocks, extension_report = resolve_extensions(blocks, known)
    report.extend(extension_report)
    report.extend(validate_taxonomies(blocks, known))
    return blocks, report


def add_taxonomy_file(path: str | os.PathLike) -> ValidationReport:
    """Make the taxonomies of a user file available by name. Raises TaxonomyFileError listing every error;
    returns the report (warnings) otherwise."""
    return _register(path)[1]


def _register(path) -> tuple[list[Taxonomy], ValidationReport]:
    blocks, report = validate_file(path)
    report.raise_if_errors()
    for tax in blocks:
        _user[tax.name] = tax
    return blocks, report


def add_taxonomy_files(paths) -> ValidationReport:
    """``DATA.taxonomy_files`` (one path or several): ``add_taxonomy_file`` for each, once per process: a file added
    before with the same content is skipped (a run builds its converter once per stage, every tool loads the key).
    A file whose content changed since it was added is an error."""
    report = ValidationReport()
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths or []):
        key = str(Path(path).expanduser().resolve())
        try:
            text = Path(key).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None  # add_taxonomy_file reports it, naming the file
        added_text, names = _user_files.get(key, (None, ()))
        if text is not None and added_text is not None and all(_user.get(n) is not None for n in names):
            if added_text != text:
                report.error(path, None, None, "this taxonomy file changed since this process added it; restart")
                report.raise_if_errors()
            continue
        blocks, file_report = _register(path)
        report.extend(file_report)
        _user_files[key] = (text, tuple(tax.name for tax in blocks))
    return report


def naive_class_names(train_datasets) -> list[str]:
    """MSeg's naive taxonomy: lower-cased names in dataset order, duplicates removed; id 255 is skipped ('')."""
    names: list[str] = []
    seen: set[str] = set()
    for dataset in train_datasets:
        for cls in get_taxonomy(dataset).class_names:
            low = cls.lower()
            if low in seen:
                continue
            seen.add(low)
            if len(names) == IGNORE_INDEX:
                names.append("")
            names.append(low)
    return names
