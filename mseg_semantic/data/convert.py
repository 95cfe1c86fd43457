"""Colour-coded label images -> label id PNGs, exactly: every pixel's colour is looked up in a palette.

Many datasets (and most annotation tools) save labels as colours; training reads uint8 id PNGs (255 = unlabeled).
The lookup packs each pixel's R, G, B into one uint32 and finds it among the palette's sorted packed colours
(``np.searchsorted``): no per-pixel Python, no nearest-colour guessing. A colour that is not in the palette is never
mapped to something: the file is not written and the report lists each unknown colour with its pixel count (JPEG
masks are refused for that reason: their colours are not exact). Outputs are written atomically.

A palette is one of:
- a TSV file with a header line holding ``id`` and ``color`` (``name`` optional), e.g. ``id	name	color`` then
  ``0	road	128 64 128``; ``color`` is ``R G B``, ``R,G,B`` or ``#rrggbb``; id 255 marks unlabeled colours. A taxonomy
  file (``mseg-taxonomy validate`` format: ``key	value`` lines, then ``id	name	universal	color``) is such a file;
- a taxonomy's colours (:func:`taxonomy_palette`), with ``unlabeled`` colours mapped to 255.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from mseg_semantic.atomic import atomic_write_bytes
from mseg_semantic.errors import UserError, not_utf8_error
from mseg_semantic.taxonomy import IGNORE_INDEX, Catalog

__all__ = ["COLOUR_SUFFIXES", "ConvertReport", "Palette", "convert_image", "convert_labels", "pack_rgb", "parse_color",
           "read_palette", "taxonomy_palette"]

COLOUR_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless: a colour read back is the colour written
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")


class PaletteError(UserError):
    """The palette cannot be used (format, duplicate colours); the message names the file and line."""


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``... x 3`` uint8 RGB -> ``...`` uint32 ``R << 16 | G << 8 | B``."""
    rgb = rgb.astype(np.uint32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(packed: int) -> tuple[int, int, int]:
    return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255


def parse_color(text: str) -> tuple[int, int, int] | None:
    """``'R G B'``, ``'R,G,B'`` or ``'#rrggbb'`` -> (r, g, b); None when it is none of these."""
    text = text.strip()
    if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
    parts = [p for p in re.split(r"[\s,]+", text) if p]
    if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
        return int(parts[0]), int(parts[1]), int(parts[2])
    return None


@dataclass(frozen=True)
class Palette:
    """Colours and the id each stands for; ``keys`` sorted packed colours, ``ids`` the id of each."""

    keys: np.ndarray  # (N,) uint32, sorted
    ids: np.ndarray  # (N,) uint8
    names: dict[int, str] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_colors(cls, colors: Sequence[tuple[int, int, int]], ids: Sequence[int], names: dict[int, str] | None = None,
                    source: str = "", where: Sequence[str] | None = None) -> "Palette":
        """A palette from parallel lists; a colour given twice is an error naming both places (``where``)."""
        where = list(where) if where is not None else [f"id {i}" for i in ids]
        packed = pack_rgb(np.asarray(colors, dtype=np.uint8).reshape(-1, 3))
        seen: dict[int, int] = {}
        for index, key in enumerate(packed.tolist()):
            if key in seen:
                first = seen[key]
                raise PaletteError(f"{source}: colour {_unpack(key)} is given to {where[first]} and {where[index]}; a colour must name "
                                   f"one id (give each class its own colour, or convert with a palette file)")
            seen[key] = index
        bad = [i for i in ids if not 0 <= int(i) <= IGNORE_INDEX]
        if bad:
            raise PaletteError(f"{source}: id {bad[0]} is outside 0..{IGNORE_INDEX} (label PNGs are uint8; {IGNORE_INDEX} = unlabeled)")
        order = np.argsort(packed, kind="stable")
        return cls(packed[order], np.asarray(ids, dtype=np.uint8)[order], dict(names or {}), source)

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """H x W x 3 RGB -> (H x W uint8 ids, H x W bool: found in the palette)."""
        packed = pack_rgb(rgb)
        index = np.searchsorted(self.keys, packed)
        index = np.minimum(index, len(self.keys) - 1)
        found = self.keys[index] == packed
        return self.ids[index], found


def read_palette(path: str | os.PathLike) -> Palette:
    """A palette TSV (module docstring): the header with ``id`` and ``color`` may follow ``key<TAB>value`` lines."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, exc, "a palette TSV (id, name, color columns)") from None
    header: dict[str, int] | None = None
    colors, ids, names, where = [], [], {}, []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if header is None:
            if fields[0] == "id":
                header = {name: i for i, name in enumerate(fields)}
                if "color" not in header:
                    raise PaletteError(f"{path}:{number}: the header has no 'color' column; expected e.g. 'id<TAB>name<TAB>color'")
            continue  # `key<TAB>value` lines of a taxonomy file before its header
        def cell(name: str) -> str:
            return fields[header[name]] if name in header and header[name] < len(fields) else ""
        if not cell("id").isdigit():
            raise PaletteError(f"{path}:{number}: id {cell('id')!r} is not a number 0..{IGNORE_INDEX}")
        color = parse_color(cell("color"))
        if color is None:
            raise PaletteError(f"{path}:{number}: color {cell('color')!r}: expected 'R G B' (0..255 each), 'R,G,B' or '#rrggbb'")
        colors.append(color)
        ids.append(int(cell("id")))
        names.setdefault(int(cell("id")), cell("name"))
        where.append(f"line {number}")
    if header is None:
        raise PaletteError(f"{path}: no header line; a palette TSV starts with 'id<TAB>name<TAB>color' (tab-separated)")
    if not colors:
        raise PaletteError(f"{path}: the palette lists no colours")
    return Palette.from_colors(colors, ids, names, str(path), where)


def taxonomy_palette(catalog: Catalog, name: str, unlabeled: Iterable[tuple[int, int, int]] = ()) -> Palette:
    """The colours of taxonomy ``name`` (its file's ``color`` column), each class's id; ``unlabeled`` colours -> 255."""
    taxonomy = catalog.taxonomy(name)
    if taxonomy.colors is None:
        raise PaletteError(f"taxonomy {name} has no colour column in its file (or only some rows have one): give the colours "
                           f"with --palette FILE (id, name, color columns)")
    unlabeled = list(unlabeled)
    colors = [tuple(int(v) for v in c) for c in taxonomy.colors] + unlabeled
    ids = list(range(len(taxonomy.colors))) + [IGNORE_INDEX] * len(unlabeled)
    where = [f"class {i} ({n})" for i, n in enumerate(taxonomy.class_names)] + ["--unlabeled-color"] * len(unlabeled)
    return Palette.from_colors(colors, ids, dict(enumerate(taxonomy.class_names)), f"taxonomy {name}", where)


def _read_colour_image(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB of a colour-coded label file; a grey, 16-bit or undecodable file is a problem (UserError)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"{path}: cannot be decoded as an image")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise UserError(f"{path}: a single-channel image (an id PNG already?); convert reads colour-coded labels")
    if image.dtype != np.uint8:
        raise UserError(f"{path}: {image.dtype} colours; colour-coded labels are 8 bits per channel")
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB  # alpha is not part of a class colour
    return cv2.cvtColor(image, code)


def _unknown_colours(packed: np.ndarray, limit: int = 5) -> str:
    keys, counts = np.unique(packed, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shown = ", ".join(f"{_unpack(int(keys[i]))} x {int(counts[i])}" for i in order[:limit])
    more = f", and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{int(counts.sum())} pixels in {len(keys)} colour(s) not in the palette: {shown}{more}"


def convert_image(rgb: np.ndarray, palette: Palette) -> tuple[np.ndarray | None, str]:
    """(H x W uint8 ids, "") or (None, what is unknown: colours with pixel counts, most pixels first)."""
    ids, found = palette.lookup(rgb)
    if found.all():
        return ids, ""
    return None, _unknown_colours(pack_rgb(rgb[~found]))


@dataclass
class ConvertReport:
    palette: Palette
    written: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each: FILE: what is wrong (not written)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # pixels per id over the written files

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        present = np.nonzero(self.histogram)[0]
        classes = ", ".join(f"{i} {self.palette.names.get(int(i), '') or '?'}".rstrip() for i in present[:12]) + (" ..." if len(present) > 12 else "")
        lines = [f"converted {len(self.written)} file(s) with {len(self.palette)} palette colours ({self.palette.source}); "
                 f"ids present: {classes or '(none)'}"]
        if self.problems:
            lines += [f"problems: {len(self.problems)} file(s) not written", *self.problems]
        return "\n".join(lines)


def _inputs(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such file or folder of colour-coded labels")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in COLOUR_SUFFIXES + LOSSY_SUFFIXES)
    if not files:
        raise UserError(f"{source} holds no label images ({', '.join(COLOUR_SUFFIXES)})")
    return files


def convert_labels(source: str | os.PathLike, out_dir: str | os.PathLike, palette: Palette) -> ConvertReport:
    """Convert one colour-coded file, or every one under a folder (sub-folders kept), to ``out_dir/<same path>.png``.
    A file with an unknown colour, a lossy or unreadable file is a problem of the report and is not written."""
    source, out_dir = Path(source), Path(out_dir)
    files = _inputs(source)
    if out_dir.resolve() == (source if source.is_dir() else source.parent).resolve():
        raise UserError(f"output folder {out_dir} is the input folder: the ids would replace the colour labels; give another folder")
    report = ConvertReport(palette)
    for path in files:
        relative = path.relative_to(source) if source.is_dir() else Path(path.name)
        if path.suffix.lower() in LOSSY_SUFFIXES:
            report.problems.append(f"{path}: {path.suffix} is lossy compression, its colours are not the palette's; colour labels must be PNG (or BMP/TIFF)")
            continue
        try:
            rgb = _read_colour_image(path)
        except UserError as exc:
            report.problems.append(str(exc))
            continue
        ids, unknown = convert_image(rgb, palette)
        if ids is None:
            report.problems.append(f"{path}: {unknown}")
            continue
        ok, encoded = cv2.imencode(".png", ids)
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
            raise RuntimeError(f"PNG encoding of {path} failed")
        report.written.append(atomic_write_bytes(out_dir / relative.with_suffix(".png"), encoded.tobytes()))
        report.histogram += np.bincount(ids.ravel(), minlength=256)
    return report
