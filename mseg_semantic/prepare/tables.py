"""Remap tables (``prepare/data/remap/SRC_to_DST.tsv``) resolved to id lookup tables.

A table names, for every label id of the source taxonomy, the source class and the target class it becomes
("unlabeled" = 255). Names are checked against ``mseg_semantic.taxonomy.load_class_names`` for both
taxonomies, so a table that drifts from the taxonomy files fails loudly. RGB-encoded sources (CamVid,
Mapillary) also carry the colour of each source class.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from mseg_semantic.errors import UserError, did_you_mean

IGNORE = 255
UNKNOWN = -1  # lookup value of an id the source taxonomy does not have
TABLE_DIR = Path(__file__).resolve().parent / "data" / "remap"


class TableError(UserError):
    pass


@dataclass(frozen=True, eq=False)  # identity hash: cached lookup tables
class RemapTable:
    source: str
    target: str
    source_names: tuple[str, ...]
    target_names: tuple[str, ...]
    mapping: tuple[int, ...]  # source id -> target id (255 = unlabeled)
    colors: np.ndarray | None  # (K, 3) uint8 RGB of the source classes, for colour-encoded labels
    path: Path

    @property
    def lut(self) -> np.ndarray:
        """int16 lookup over all uint16 values: target id, or UNKNOWN for ids the source taxonomy lacks."""
        return _lut(self)

    def target_id(self, source_id: int) -> int:
        return self.mapping[source_id]


@lru_cache(maxsize=None)
def _lut(table: RemapTable) -> np.ndarray:
    lut = np.full(65536, UNKNOWN, dtype=np.int16)
    lut[: len(table.mapping)] = table.mapping
    # 255 is the ignore value of every label map unless the source taxonomy really has a class 255
    if len(table.source_names) <= IGNORE:
        lut[IGNORE] = IGNORE
    lut.setflags(write=False)
    return lut


def table_path(source: str, target: str) -> Path:
    return TABLE_DIR / f"{source}_to_{target}.tsv"


def _class_names(name: str) -> list[str]:
    from mseg_semantic.taxonomy import load_class_names

    return list(load_class_names(name))


def parse_table(path: Path, source_names: list[str] | None = None, target_names: list[str] | None = None) -> RemapTable:
    """Read and validate a table file; names default to the taxonomy package's."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"remap table {path} does not exist")
    header: dict[str, str] = {}
    columns: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if columns is None:
            if cells[0] in ("source", "target") and len(cells) == 2:
                header[cells[0]] = cells[1]
                continue
            if cells[:3] != ["id", "source_name", "target_name"]:
                raise TableError(f"{path}:{lineno}: expected the column header 'id<TAB>source_name<TAB>target_name[<TAB>source_color]'")
            columns = cells
            continue
        if len(cells) != len(columns):
            raise TableError(f"{path}:{lineno}: expected {len(columns)} tab-separated cells, got {len(cells)}")
        rows.append((lineno, cells))
    if "source" not in header or "target" not in header or columns is None:
        raise TableError(f"{path}: missing 'source', 'target' or column header lines")
    source, target = header["source"], header["target"]
    source_names = list(source_names) if source_names is not None else _class_names(source)
    target_names = list(target_names) if target_names is not None else _class_names(target)
    target_ids = {name: i for i, name in enumerate(target_names)}
    mapping: list[int | None] = [None] * len(source_names)
    has_color = "source_color" in columns
    colors = np.zeros((len(source_names), 3), dtype=np.uint8) if has_color else None
    for lineno, cells in rows:
        try:
            sid = int(cells[0])
        except ValueError:
            raise TableError(f"{path}:{lineno}: id {cells[0]!r} is not an integer") from None
        if not 0 <= sid < len(source_names):
            raise TableError(f"{path}:{lineno}: id {sid} is outside {source} (0..{len(source_names) - 1})")
        if cells[1] != source_names[sid]:
            raise TableError(f"{path}:{lineno}: id {sid} is {source_names[sid]!r} in taxonomy {source}, the table says {cells[1]!r}")
        if mapping[sid] is not None:
            raise TableError(f"{path}:{lineno}: id {sid} appears twice")
        tname = cells[2]
        if tname == "unlabeled" and tname not in target_ids:
            mapping[sid] = IGNORE
        elif tname in target_ids:
            mapping[sid] = target_ids[tname]
        else:
            raise TableError(f"{path}:{lineno}: target class {tname!r} is not in taxonomy {target}{did_you_mean(tname, target_ids)}")
        if has_color:
            try:
                rgb = [int(v) for v in cells[columns.index("source_color")].split()]
            except ValueError:
                rgb = []
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise TableError(f"{path}:{lineno}: source_color must be three integers 0..255, got {cells[columns.index('source_color')]!r}")
            colors[sid] = rgb
    missing = [i for i, m in enumerate(mapping) if m is None]
    if missing:
        raise TableError(f"{path}: no row for source id(s) {missing[:10]} of {source}; every source class needs a target")
    if has_color and len({tuple(c) for c in colors}) != len(colors):
        raise TableError(f"{path}: two source classes share a colour; colour decoding would be ambiguous")
    return RemapTable(source, target, tuple(source_names), tuple(target_names), tuple(mapping), colors, path)


@lru_cache(maxsize=None)
def load_table(source: str, target: str) -> RemapTable:
    return parse_table(table_path(source, target))
