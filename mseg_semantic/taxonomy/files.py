"""Taxonomy files: one TSV format for the built-in data and for user files.

A file holds one or more taxonomy blocks. A block is a few `key<TAB>value` lines, a column header
starting with `id`, then one row per class (row order = label id, starting at 0)::

    # comment lines start with '#'
    taxonomy	camvid-11
    role	test
    id	name	universal	color
    0	Building	building, house	128 0 0

Roles and their columns (`color` is optional everywhere, `R G B` in 0..255):
    universal  id name [color parent wordnet definition]   the model's label space
    train      id name universal [color]   the source class's label set: comma-separated universal classes, the
                                           FIRST being its one-hot target (MSeg's mapping), the others what the
                                           class may also be (partial-label training); or `unlabeled` (-> 255)
    test       id name universal [color]   comma-separated universal classes whose probability the class receives
    raw        id name [color]             names only (a dataset's label space before remapping)
Train and test blocks map to the universal taxonomy named by the optional `maps_to` key (default `universal`).
A block with `extends BASE` starts from the known taxonomy BASE of the same role: a universal block lists only
the classes it adds (ids continue after BASE's), a train or test block only the rows whose mapping it changes
(each row's id and name must be BASE's). The extension is resolved when the file is validated or added.

Parsing never stops at the first problem: every problem lands in a ValidationReport with file, line,
what is wrong and what would be valid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mseg_semantic.errors import UserError, did_you_mean

IGNORE_INDEX = 255  # "unlabeled" in every label map of every taxonomy; the loss and the metrics skip it
UNLABELED = "unlabeled"
DEFAULT_UNIVERSAL = "universal"
ROLES = ("universal", "train", "test", "raw")
META_KEYS = ("taxonomy", "role", "maps_to", "extends", "description")
ROLE_COLUMNS = {
    "universal": ("id", "name", "color", "parent", "wordnet", "definition"),
    "train": ("id", "name", "universal", "color"),
    "test": ("id", "name", "universal", "color"),
    "raw": ("id", "name", "color"),
}
REQUIRED_COLUMNS = {
    "universal": ("id", "name"),
    "train": ("id", "name", "universal"),
    "test": ("id", "name", "universal"),
    "raw": ("id", "name"),
}
# Label PNGs are uint8 and IGNORE_INDEX means "unlabeled", so a label space has at most 255 classes.
MAX_CLASSES = 255


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    file: str
    line: int | None
    taxonomy: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        tax = f" [{self.taxonomy}]" if self.taxonomy else ""
        return f"{where}: {self.severity}:{tax} {self.message}"


@dataclass
class ValidationReport:
    problems: list[Problem] = field(default_factory=list)

    def error(self, file, line, taxonomy, message) -> None:
        self.problems.append(Problem("error", str(file), line, taxonomy, message))

    def warning(self, file, line, taxonomy, message) -> None:
        self.problems.append(Problem("warning", str(file), line, taxonomy, message))

    def info(self, file, line, taxonomy, message) -> None:
        """Worth knowing, never a problem (e.g. label sets that overlap, as they may)."""
        self.problems.append(Problem("info", str(file), line, taxonomy, message))

    def extend(self, other: "ValidationReport") -> None:
        self.problems.extend(other.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def infos(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "info"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, with_info: bool = True) -> str:
        lines = [str(p) for p in self.problems if with_info or p.severity != "info"]
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
                     + (f", {len(self.infos)} info" if self.infos else ""))
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise TaxonomyFileError(self)


class TaxonomyFileError(UserError):
    def __init__(self, report: ValidationReport):
        self.report = report
        super().__init__("invalid taxonomy data:\n" + report.format())


@dataclass
class Taxonomy:
    """One label space as read from a file. Index in `class_names` = label id."""

    name: str
    role: str
    class_names: list[str]
    colors: np.ndarray | None = None  # (K, 3) uint8, None when the file gives none
    # train: the label set of each class (first = one-hot target); test: the universal classes each class receives
    universal: list[tuple[str, ...]] = field(default_factory=list)
    maps_to: str = DEFAULT_UNIVERSAL
    extra: dict[str, list[str]] = field(default_factory=dict)  # universal: parent/wordnet/definition
    description: str = ""
    source: str = "<memory>"
    lines: list[int] = field(default_factory=list)  # file line of each class row
    extends: str = ""  # an unresolved extension of this taxonomy (see the module docstring); "" once resolved
    row_ids: list[int] = field(default_factory=list)  # the id each row gives (0, 1, ... unless an extension)
    row_colors: list = field(default_factory=list)  # an extension's colour per row, (r, g, b) or None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def is_set_valued(self, class_id: int) -> bool:
        """A train class whose label set holds several universal classes."""
        return self.role == "train" and len(self.universal[class_id]) > 1


def split_universal_cell(cell: str) -> list[str]:
    return [part.strip() for part in cell.split(",") if part.strip()]


def parse_taxonomy_text(text: str, source: str = "<memory>") -> tuple[list[Taxonomy], ValidationReport]:
    """Parse the blocks of one file; structural checks only (names are cross-checked by validate)."""
    report = ValidationReport()
    blocks: list[Taxonomy] = []
    state: dict | None = None  # the block being read

    def finish() -> None:
        if state is None:
            return
        tax = _finish_block(state, source, report)
        if tax is not None:
            blocks.append(tax)

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        key = fields[0].strip()
        if key == "taxonomy":
            finish()
            state = {"meta": {}, "meta_line": lineno, "key_lines": {}, "columns": None, "rows": []}
        if state is None:
            report.error(source, lineno, None, f"expected 'taxonomy<TAB>NAME' to start a block, got {line[:60]!r}")
            continue
        if state["columns"] is None:
            if key == "id":
                state["columns"] = [c.strip() for c in fields]
                state["header_line"] = lineno
                continue
            if len(fields) != 2:
                report.error(source, lineno, state["meta"].get("taxonomy"),
                             f"metadata line needs exactly 'key<TAB>value', got {len(fields)} field(s): {line[:60]!r}")
                continue
            if key not in META_KEYS:
                report.error(source, lineno, state["meta"].get("taxonomy"),
                             f"unknown key {key!r}{did_you_mean(key, META_KEYS)}; valid keys: {', '.join(META_KEYS)}")
                continue
            if key in state["meta"]:
                report.error(source, lineno, state["meta"].get("taxonomy"),
                             f"key {key!r} is given twice in this block (first {state['meta'][key]!r}); keep one")
                continue
            state["meta"][key] = fields[1].strip()
            state["key_lines"][key] = lineno
            continue
        state["rows"].append((lineno, fields))
    finish()
    if not blocks and report.ok:
        report.error(source, None, None, "no taxonomy block found (a block starts with 'taxonomy<TAB>NAME')")
    return blocks, report


def _finish_block(state: dict, source: str, report: ValidationReport) -> Taxonomy | None:
    meta = state["meta"]
    name = meta.get("taxonomy", "")
    at = state["meta_line"]
    if not name:
        report.error(source, at, None, "empty taxonomy name")
        return None
    if any(ch.isspace() for ch in name) or "," in name:
        report.error(source, at, name, "taxonomy name must not contain spaces or commas")
    role = meta.get("role")
    if role is None:
        report.error(source, at, name, f"missing 'role' line; valid roles: {', '.join(ROLES)}")
        return None
    if role not in ROLES:
        report.error(source, state["key_lines"]["role"], name,
                     f"unknown role {role!r}{did_you_mean(role, ROLES)}; valid roles: {', '.join(ROLES)}")
        return None
    columns = state["columns"]
    if columns is None:
        report.error(source, at, name, "missing column header line (e.g. 'id<TAB>name<TAB>universal<TAB>color')")
        return None
    header_line = state["header_line"]
    allowed = ROLE_COLUMNS[role]
    bad_columns = False
    for col in columns:
        if col not in allowed:
            report.error(source, header_line, name, f"unknown column {col!r}{did_you_mean(col, allowed)} for role "
                         f"{role!r}; valid columns: {', '.join(allowed)}")
            bad_columns = True
    for col in REQUIRED_COLUMNS[role]:
        if col not in columns:
            report.error(source, header_line, name, f"role {role!r} needs a {col!r} column")
            bad_columns = True
    if len(set(columns)) != len(columns):
        report.error(source, header_line, name, "a column is named twice")
        bad_columns = True
    if bad_columns:
        return None
    if role == "universal" and "maps_to" in meta:
        report.error(source, state["key_lines"]["maps_to"], name, "'maps_to' applies to train/test taxonomies, not to a universal one")
    extends = meta.get("extends", "")
    if extends and role == "raw":
        report.error(source, state["key_lines"]["extends"], name, "'extends' applies to universal, train and test taxonomies, not to a raw one")
        extends = ""

    col = {c: i for i, c in enumerate(columns)}
    names: list[str] = []
    lines: list[int] = []
    row_ids: list[int] = []
    universal: list[tuple[str, ...]] = []
    colors: list[tuple[int, int, int] | None] = []
    extra: dict[str, list[str]] = {c: [] for c in columns if c in ("parent", "wordnet", "definition")}
    for lineno, fields in state["rows"]:
        if len(fields) > len(columns):
            report.error(source, lineno, name, f"{len(fields)} fields but the header has {len(columns)} "
                         f"({', '.join(columns)}); is there a stray TAB?")
            continue
        fields = fields + [""] * (len(columns) - len(fields))
        id_text = fields[col["id"]].strip()
        expected = len(names)
        if extends:  # rows name ids of the base (or continue it); the base checks them when the block is resolved
            if not id_text.isdigit() or (row_ids and int(id_text) <= row_ids[-1]):
                report.error(source, lineno, name, f"id {id_text!r}: expected an integer above the previous row's "
                             f"id{f' ({row_ids[-1]})' if row_ids else ''} (an extension's rows are in id order)")
                continue
        elif not id_text.isdigit() or int(id_text) != expected:
            report.error(source, lineno, name, f"id {id_text!r}: expected {expected} (ids run 0, 1, 2, ... "
                         "in row order, because the row index is the label id)")
            id_text = str(expected)  # read the row as that id: its other fields are checked too, later ids stay in step
        cls = fields[col["name"]].strip()
        if not cls:
            report.error(source, lineno, name, f"class {id_text} has an empty name")
        names.append(cls)
        lines.append(lineno)
        row_ids.append(int(id_text))
        if "universal" in col:
            universal.append(tuple(split_universal_cell(fields[col["universal"]])))
        if "color" in col:
            colors.append(_parse_color(fields[col["color"]], source, lineno, name, report))
        for key in extra:
            extra[key].append(fields[col[key]].strip())

    if not names and not extends:
        report.error(source, header_line, name, "taxonomy has no classes")
        return None
    if len(names) > MAX_CLASSES and role != "raw":  # raw label spaces may be stored as uint16 (pascal-context-460)
        report.error(source, lines[MAX_CLASSES], name, f"{len(names)} classes; at most {MAX_CLASSES} fit in a "
                     "uint8 label map with 255 = unlabeled")
    color_arr = None
    if colors and all(c is not None for c in colors) and not extends:
        color_arr = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return Taxonomy(name=name, role=role, class_names=names, colors=color_arr, universal=universal,
                    maps_to=meta.get("maps_to", DEFAULT_UNIVERSAL), extra=extra,
                    description=meta.get("description", ""), source=source, lines=lines, extends=extends,
                    row_ids=row_ids, row_colors=colors if extends else [])


def _parse_color(cell: str, source, lineno, name, report) -> tuple[int, int, int] | None:
    parts = cell.split()
    if not parts:
        return None
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        report.error(source, lineno, name, f"color {cell!r}: expected three integers 0..255 separated by spaces, "
                     "e.g. '128 64 128'")
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def read_taxonomy_file(path: str | os.PathLike) -> tuple[list[Taxonomy], ValidationReport]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report = ValidationReport()
        report.error(path, None, None, f"cannot read taxonomy file: {exc}")
        return [], report
    return parse_taxonomy_text(text, source=str(path))


def format_taxonomy(tax: Taxonomy) -> str:
    """The file text of one block (inverse of parse_taxonomy_text); an extension is written resolved (whole)."""
    if tax.extends:
        raise ValueError(f"taxonomy {tax.name!r} extends {tax.extends!r} and is not resolved yet (resolve_extensions)")
    out = [f"taxonomy\t{tax.name}", f"role\t{tax.role}"]
    if tax.role in ("train", "test") and tax.maps_to != DEFAULT_UNIVERSAL:
        out.append(f"maps_to\t{tax.maps_to}")
    if tax.description:
        out.append(f"description\t{tax.description}")
    columns = ["id", "name"]
    if tax.role in ("train", "test"):
        columns.append("universal")
    if tax.colors is not None:
        columns.append("color")
    columns += [c for c in ("parent", "wordnet", "definition") if c in tax.extra]
    out.append("\t".join(columns))
    for i, cls in enumerate(tax.class_names):
        row = {"id": str(i), "name": cls}
        if tax.role in ("train", "test"):
            row["universal"] = ", ".join(tax.universal[i])
        if tax.colors is not None:
            row["color"] = " ".join(str(int(v)) for v in tax.colors[i])
        for key, values in tax.extra.items():
            row[key] = values[i]
        out.append("\t".join(row[c] for c in columns))
    return "\n".join(out) + "\n"


def palette(num_classes: int) -> np.ndarray:
    """Deterministic (K, 3) uint8 colours: the PASCAL VOC bit-interleaving scheme (so VOC ids get VOC colours)."""
    colors = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        value, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colors[i] = (r, g, b)
    return colors
