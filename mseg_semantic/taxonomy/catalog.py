"""The Catalog: the taxonomies and datasets one run knows, and where its data is.

A :class:`Catalog` is built once (``Catalog.from_config(cfg)``: ``DATA.taxonomy_files``, ``DATA.dataset_tables``,
``DATA.data_root``, ``DATA.dataset_roots``, ``DATA.dataset_lists``) and passed to what needs it: the converters,
the training loader, evaluation and ``prepare/``. It holds

- the built-in taxonomies (``taxonomy/data/NAME.tsv``) and the blocks of the user's taxonomy files;
- the dataset table (``taxonomy/data/datasets/datasets.tsv``, plus the user's tables): per dataset its directory under the
  data root, where its split lists are, its title, its raw taxonomy, what it is the relabeled version of, the
  ``mseg-prepare`` key that produces it and the groups it belongs to (MSeg's training sets, the zero-shot six);
- where the data is: :meth:`Catalog.locate` gives a dataset split's directory and list file.

A dataset is named by the taxonomy its labels are in, so adding one is its taxonomy file plus one table row. A
dataset of a user taxonomy without a row lives in ``DATA.dataset_roots[name]`` (else ``<data_root>/<name>``) with
MSeg's list layout. Nothing here is mutable: a Catalog with more files is a new Catalog.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from mseg_semantic.errors import UnknownNameError, UserError, did_you_mean
from mseg_semantic.taxonomy.files import (
    IGNORE_INDEX,
    Taxonomy,
    TaxonomyFileError,
    ValidationReport,
    palette,
    read_taxonomy_file,
)
from mseg_semantic.taxonomy.validation import resolve_extensions, validate_taxonomies

__all__ = [
    "DATA_DIR", "DATA_ROOT_ENV", "DEFAULT_TEST_DATASETS", "DEFAULT_TRAIN_DATASETS", "NUM_UNIVERSAL_CLASSES",
    "RELABELED_TRAIN_DATASETS", "UNRELABELED_TRAIN_DATASETS", "ZERO_SHOT_DATASETS", "Catalog", "DatasetLocation",
    "DatasetRecord", "get_taxonomy", "load_class_colors", "load_class_names", "naive_class_names", "read_dataset_table",
    "taxonomy_names", "validate_file",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
DATASET_TABLE = DATA_DIR / "datasets" / "datasets.tsv"
DATA_ROOT_ENV = "MSEG_DATA_ROOT"
NUM_UNIVERSAL_CLASSES = 194
NAIVE = "naive"
MSEG_LISTS = "mseg"  # the list layout mseg-prepare writes: <data_root>/dataset_lists/<name>/list/<split>.txt
TABLE_COLUMNS = ("name", "directory", "lists", "title", "raw", "relabeled_from", "prepare", "groups")
GROUPS = ("mseg_unrelabeled", "mseg_relabeled", "zero_shot")
KNOWN_SPLITS = ("train", "val", "test")  # a split name close to one of these but not equal is a typo


class DatasetTableError(UserError):
    """A dataset table row that cannot be used; the message names the file, the line and what would be valid."""


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset: its row of the dataset table, and what its taxonomy says about it."""

    name: str  # = the name of the taxonomy its labels are in
    directory: str  # under the data root
    lists: str = MSEG_LISTS  # `mseg`, or a path under the data root with {name} and {split}
    title: str = ""
    raw_taxonomy: str = ""  # its labels before mseg-prepare remaps them ("" = already in `name`)
    relabeled_from: str = ""  # the dataset this is the relabeled version of
    prepare_key: str = ""  # the mseg-prepare key that produces it
    groups: tuple[str, ...] = ()
    source: str = "<built-in>"  # the table it comes from ("" when derived for a user taxonomy without a row)

    def list_path(self, split: str) -> Path:
        """The split list's path relative to the data root."""
        if self.lists == MSEG_LISTS:
            return Path("dataset_lists") / self.name / "list" / f"{split}.txt"
        return Path(self.lists.format(name=self.name, split=split))


@dataclass(frozen=True)
class DatasetLocation:
    name: str
    root: Path  # the directory the list's relative paths start from
    list_file: Path


def read_dataset_table(path: str | os.PathLike) -> tuple[DatasetRecord, ...]:
    """The rows of a dataset table file (format: the header of ``taxonomy/data/datasets/datasets.tsv``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetTableError(f"dataset table {path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    rows: list[DatasetRecord] = []
    header: list[str] | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if header is None:
            if fields[: len(TABLE_COLUMNS)] != list(TABLE_COLUMNS[: len(fields)]) or "name" not in fields or "directory" not in fields:
                raise DatasetTableError(f"{path}:{number}: expected the header {' '.join(TABLE_COLUMNS)} (tab-separated; "
                                        f"name and directory required, the others optional, in this order), got {line!r}")
            header = fields
            continue
        if len(fields) > len(header):
            raise DatasetTableError(f"{path}:{number}: {len(fields)} fields but the header has {len(header)}; is there a stray TAB?")
        cell = dict(zip(header, fields + [""] * (len(header) - len(fields))))
        value = {k: ("" if v == "-" else v) for k, v in cell.items()}
        if not value["name"] or not value["directory"]:
            raise DatasetTableError(f"{path}:{number}: a row needs a name and a directory")
        lists = value.get("lists") or MSEG_LISTS
        if lists != MSEG_LISTS and "{split}" not in lists:
            raise DatasetTableError(f"{path}:{number}: lists={lists!r}: expected 'mseg' or a path with {{split}} "
                                    f"(e.g. lists/{{split}}.txt)")
        groups = tuple(g.strip() for g in value.get("groups", "").split(",") if g.strip())
        bad = [g for g in groups if g not in GROUPS]
        if bad:
            raise DatasetTableError(f"{path}:{number}: unknown group {bad[0]!r}{did_you_mean(bad[0], GROUPS)}; valid: {', '.join(GROUPS)}")
        rows.append(DatasetRecord(value["name"], value["directory"], lists, value.get("title") or value["name"],
                                  value.get("raw", ""), value.get("relabeled_from", ""), value.get("prepare", ""), groups, str(path)))
    if header is None:
        raise DatasetTableError(f"dataset table {path}: no header line ({' '.join(TABLE_COLUMNS)})")
    return tuple(rows)


@functools.cache
def _builtin_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in DATA_DIR.glob("*.tsv")))


@functools.cache
def _builtin_taxonomy(name: str) -> Taxonomy:
    path = DATA_DIR / f"{name}.tsv"
    blocks, report = read_taxonomy_file(path)
    report.raise_if_errors()
    if len(blocks) != 1 or blocks[0].name != name:
        report = ValidationReport()
        report.error(path, None, name, f"a built-in file must hold exactly one block named {name!r}")
        raise TaxonomyFileError(report)
    return blocks[0]


@functools.cache
def _builtin_table() -> tuple[DatasetRecord, ...]:
    return read_dataset_table(DATASET_TABLE)


class Catalog:
    """The taxonomies and datasets one run knows, and where its data is (see the module docstring).

    ``taxonomy_files``: user taxonomy files (``mseg-taxonomy validate`` format), checked against everything known
    before them; ``dataset_tables``: user dataset tables (rows of a name already in the built-in table replace it);
    ``data_root`` (default ``$MSEG_DATA_ROOT``), ``dataset_roots`` (name -> directory, relative to the data root or
    absolute), ``dataset_lists`` (name -> {split: list file}): where the data is.
    """

    def __init__(self, taxonomy_files: Iterable[str | os.PathLike] | str | os.PathLike = (),
                 dataset_tables: Iterable[str | os.PathLike] | str | os.PathLike = (),
                 data_root: str | os.PathLike | None = None,
                 dataset_roots: Mapping[str, Any] | None = None,
                 dataset_lists: Mapping[str, Mapping[str, Any]] | None = None):
        self.taxonomy_files = tuple(str(p) for p in _paths(taxonomy_files))
        self.dataset_tables = tuple(str(p) for p in _paths(dataset_tables))
        self.data_root = str(data_root) if data_root else None
        self.dataset_roots = dict(dataset_roots or {})
        bad = next((f"{name}: {splits!r}" for name, splits in (dataset_lists or {}).items() if not isinstance(splits, Mapping)), None)
        if bad:
            raise UserError(f"DATA.dataset_lists: {bad}: expected a mapping of split -> list file, e.g. {{train: lists/train.txt}}")
        self.dataset_lists = {name: dict(splits) for name, splits in (dataset_lists or {}).items()}
        self._user: dict[str, Taxonomy] = {}
        self.warnings = ValidationReport()  # what the user files' validation warned about (errors raise)
        for path in self.taxonomy_files:
            blocks, report = self.validate_file(path)
            report.raise_if_errors()
            self.warnings.extend(report)
            for tax in blocks:
                self._user[tax.name] = tax
        rows = {row.name: row for row in _builtin_table()}
        for table in self.dataset_tables:
            rows.update({row.name: row for row in read_dataset_table(table)})
        self._rows = rows
        self._check_data_overrides()

    def _check_data_overrides(self) -> None:
        """``dataset_roots`` / ``dataset_lists`` name known datasets and splits, with paths as values: a typo would
        otherwise train on the default data without a word."""
        known = self.taxonomy_names()
        for key, mapping in (("DATA.dataset_roots", self.dataset_roots), ("DATA.dataset_lists", self.dataset_lists)):
            for name, value in mapping.items():
                if name not in known:
                    raise UserError(f"{key}: unknown dataset {name!r}{did_you_mean(str(name), known)}; a key must be a "
                                    f"taxonomy name (a user taxonomy's file goes in DATA.taxonomy_files)")
                if key == "DATA.dataset_roots" and not isinstance(value, (str, os.PathLike)):
                    raise UserError(f"{key}[{name!r}]={value!r}: expected a directory path (a string)")
        for name, splits in self.dataset_lists.items():
            for split, path in splits.items():
                close = did_you_mean(str(split), KNOWN_SPLITS)
                if str(split) not in KNOWN_SPLITS and close:
                    raise UserError(f"DATA.dataset_lists[{name!r}]: unknown split {split!r}{close}")
                if not isinstance(path, (str, os.PathLike)):
                    raise UserError(f"DATA.dataset_lists[{name!r}][{split!r}]={path!r}: expected a list file path (a string)")

    @classmethod
    def builtin(cls) -> "Catalog":
        """The built-in taxonomies and datasets, the data root from ``$MSEG_DATA_ROOT``."""
        return cls()

    @classmethod
    def from_config(cls, cfg: Any) -> "Catalog":
        """From a config's DATA section (user files, user tables, where the data is)."""
        data = cfg.DATA
        try:
            return cls(data.taxonomy_files, data.dataset_tables, data.data_root or None, data.dataset_roots, data.dataset_lists)
        except TaxonomyFileError as exc:
            raise type(exc)(exc.report) from None
        except DatasetTableError as exc:
            raise DatasetTableError(f"DATA.dataset_tables: {exc}") from None

    def __repr__(self) -> str:
        return (f"Catalog(taxonomy_files={list(self.taxonomy_files)}, dataset_tables={list(self.dataset_tables)}, "
                f"data_root={self.data_root!r})")

    # ---- taxonomies ----------------------------------------------------------------------------------------
    def taxonomy_names(self, role: str | None = None) -> list[str]:
        """Every known taxonomy name (built-in, then the user's), optionally only those of one role."""
        names = list(_builtin_names()) + sorted(n for n in self._user if n not in _builtin_names())
        return names if role is None else [n for n in names if self.taxonomy(n).role == role]

    def taxonomy(self, name: str) -> Taxonomy:
        if name in self._user:
            return self._user[name]
        if name in _builtin_names():
            return _builtin_taxonomy(name)
        known = self.taxonomy_names()
        hint = "; a user taxonomy's file must be loaded: pass taxonomy_files=[FILE.tsv]" if self.taxonomy_files == () else ""
        raise UnknownNameError(f"unknown taxonomy {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}{hint}")

    def all_taxonomies(self) -> dict[str, Taxonomy]:
        return {name: self.taxonomy(name) for name in self.taxonomy_names()}

    def class_names(self, name: str) -> list[str]:
        """Class names of a taxonomy; list index = label id. 'naive' gives the 316 naive names ('' at 255)."""
        if name == NAIVE:
            return self.naive_class_names(UNRELABELED_TRAIN_DATASETS)
        return list(self.taxonomy(name).class_names)

    def class_colors(self, name: str) -> np.ndarray:
        """(K, 3) uint8 RGB colours, index = label id (a deterministic palette where the data gives none)."""
        if name == NAIVE:
            return palette(len(self.class_names(NAIVE)))
        tax = self.taxonomy(name)
        return palette(tax.num_classes) if tax.colors is None else tax.colors.copy()

    def naive_class_names(self, train_datasets: Iterable[str]) -> list[str]:
        """MSeg's naive taxonomy: lower-cased names in dataset order, duplicates removed; id 255 is skipped ('')."""
        names: list[str] = []
        seen: set[str] = set()
        for dataset in train_datasets:
            for cls in self.taxonomy(dataset).class_names:
                low = cls.lower()
                if low in seen:
                    continue
                seen.add(low)
                if len(names) == IGNORE_INDEX:
                    names.append("")
                names.append(low)
        return names

    def validate_file(self, path: str | os.PathLike) -> tuple[list[Taxonomy], ValidationReport]:
        """Parse and check a user file against everything this catalog knows; adds nothing. Blocks that extend another
        taxonomy come back resolved (whole)."""
        blocks, report = read_taxonomy_file(path)
        known = self.all_taxonomies()
        blocks, extension_report = resolve_extensions(blocks, known)
        report.extend(extension_report)
        report.extend(validate_taxonomies(blocks, known))
        return blocks, report

    def with_taxonomy_files(self, paths: Iterable[str | os.PathLike] | str | os.PathLike) -> "Catalog":
        """This catalog plus more user taxonomy files (a file already loaded is not loaded twice)."""
        added = [str(p) for p in _paths(paths) if str(p) not in self.taxonomy_files]
        return Catalog(self.taxonomy_files + tuple(added), self.dataset_tables, self.data_root, self.dataset_roots, self.dataset_lists)

    # ---- datasets ------------------------------------------------------------------------------------------
    def dataset(self, name: str) -> DatasetRecord:
        """The dataset's table row; a user taxonomy without a row lives in ``<data_root>/<name>`` (or its
        ``dataset_roots`` entry) with MSeg's list layout."""
        if name in self._rows:
            return self._rows[name]
        if name in self._user or name in self.dataset_roots:
            return DatasetRecord(name, name, title=name, source="")
        known = sorted(self._rows)
        raise UnknownNameError(f"dataset {name!r} is not in the catalog{did_you_mean(name, list(self._rows) + list(self._user))} "
                               f"and DATA.dataset_roots has no entry for it; known datasets: {', '.join(known)}")

    def dataset_names(self, group: str | None = None) -> list[str]:
        """The datasets of the table (and the user's taxonomies), or those of one group in table order."""
        if group is None:
            return list(self._rows) + [n for n in self._user if n not in self._rows]
        return [name for name, row in self._rows.items() if group in row.groups]

    def resolved_data_root(self) -> Path:
        """The configured root, else ``$MSEG_DATA_ROOT``; a clear error when neither is set."""
        value = self.data_root or os.environ.get(DATA_ROOT_ENV, "")
        if not value:
            raise UserError(f"no data root: set DATA.data_root in the config (data_root=/path) or the {DATA_ROOT_ENV} environment variable")
        return Path(value).expanduser()

    def locate(self, name: str, split: str) -> DatasetLocation:
        """Directory and list file of ``name``/``split``: the config's ``dataset_roots`` / ``dataset_lists`` first,
        then the dataset table."""
        base = self.resolved_data_root()
        record = self.dataset(name)
        directory = self.dataset_roots.get(name, record.directory)
        root = base / Path(str(directory)).expanduser()  # an absolute override replaces the base
        lists = self.dataset_lists.get(name, {})
        list_file = base / Path(str(lists[split])).expanduser() if split in lists else base / record.list_path(split)
        return DatasetLocation(name=name, root=root, list_file=list_file)

    def list_file_missing(self, name: str, split: str) -> str | None:
        """None when the split list exists, else 'not found at PATH' (or why it cannot be located)."""
        try:
            location = self.locate(name, split)
        except UserError as exc:
            return str(exc)
        return None if location.list_file.is_file() else f"not found at {location.list_file}"


def _paths(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


# ---- the built-in data, for code that has no run (tests, scripts, defaults) ------------------------------------
def _group(name: str) -> tuple[str, ...]:
    return tuple(row.name for row in _builtin_table() if name in row.groups)


UNRELABELED_TRAIN_DATASETS = list(_group("mseg_unrelabeled"))
RELABELED_TRAIN_DATASETS = list(_group("mseg_relabeled"))
# MSeg also lists cityscapes-34 as unrelabeled; it is in the data (role train) but, as in MSeg's released models,
# not among the defaults.
DEFAULT_TRAIN_DATASETS = UNRELABELED_TRAIN_DATASETS + RELABELED_TRAIN_DATASETS
# MSeg's zero-shot test datasets, in the column order of its table (VOC, PASCAL Context, CamVid, WildDash, KITTI, ScanNet)
ZERO_SHOT_DATASETS = _group("zero_shot")
DEFAULT_TEST_DATASETS = sorted(ZERO_SHOT_DATASETS)


def builtin_taxonomy_names() -> list[str]:
    return list(_builtin_names())


def taxonomy_names(role: str | None = None) -> list[str]:
    """The built-in taxonomy names (a run's user taxonomies are in its Catalog)."""
    return Catalog.builtin().taxonomy_names(role)


def get_taxonomy(name: str) -> Taxonomy:
    """A built-in taxonomy (a run's user taxonomies are in its Catalog)."""
    return Catalog.builtin().taxonomy(name)


def load_class_names(taxonomy_name: str) -> list[str]:
    return Catalog.builtin().class_names(taxonomy_name)


def load_class_colors(taxonomy_name: str) -> np.ndarray:
    return Catalog.builtin().class_colors(taxonomy_name)


def naive_class_names(train_datasets) -> list[str]:
    return Catalog.builtin().naive_class_names(train_datasets)


def validate_file(path: str | os.PathLike) -> tuple[list[Taxonomy], ValidationReport]:
    return Catalog.builtin().validate_file(path)
