"""Author taxonomy files from MSeg's public dataset API data (mseg-api, CC BY 4.0).

This is how `mseg_semantic/taxonomy/data/` was written:
    mseg-taxonomy import-mseg /path/to/mseg-api-data -o mseg_semantic/taxonomy/data
It reads `class_remapping_files/MSeg_master.tsv` (row index = universal id, last row `unlabeled` = 255; a training
cell is blank, a class name or `{a, b}`; a test cell names the test class the row counts towards) and
`dataset_lists/NAME/NAME_names.txt` / `*_colors.txt`. A user with an edited MSeg master TSV can convert it the same way.

Label sets of the unrelabeled training taxonomies come from MSeg's relabeling records
(`relabeling_update_records.tsv`, the segment counts of the lists in `relabeled_data/`): a class's set is its
universal class (first: the one-hot target, MSeg's mapping) plus the universal classes its train-split records move
segments to that the rule of :mod:`mseg_semantic.taxonomy.label_set_rule` keeps; the rule's evidence goes to
`label_sets/evidence.tsv` beside the taxonomy files. Records name their original class in the relabeled taxonomy;
its source classes are found by one-hot target and checked against `X_to_X-relabeled.tsv`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mseg_semantic.atomic import atomic_write_text
from mseg_semantic.errors import did_you_mean
from mseg_semantic.taxonomy.files import (
    UNLABELED,
    Taxonomy,
    ValidationReport,
    format_taxonomy,
    palette,
)
from mseg_semantic.taxonomy.label_set_rule import MemberEvidence, derive_label_sets

# Test taxonomies of MSeg's zero-shot benchmark; any other master-TSV column with a names file is a training one.
MSEG_TEST_COLUMNS = ("camvid-11", "kitti-19", "pascal-context-60", "scannet-20", "voc2012", "wilddash-19")
MASTER_NON_DATASET_COLUMNS = ("Parent Category", "universal", "WordNet 3.1 Synset",
                              "Defn (Most of the meanings are derived from WordNet 3.1)",
                              "Modification of WordNet Node")
# Where a taxonomy without its own colour file borrows colours, by class name (first source that has the name).
COLOR_SOURCES = {
    "ade20k-150-relabeled": ["ade20k-150"],
    "ade20k-151": ["ade20k-150"],
    "bdd-relabeled": ["bdd", "cityscapes-19"],
    "camvid-11": ["camvid-32"],
    "cityscapes-19-relabeled": ["cityscapes-19"],
    "cityscapes-34": ["cityscapes-19"],
    "cityscapes-34-relabeled": ["cityscapes-19-relabeled", "cityscapes-19"],
    "coco-panoptic-133-relabeled": ["coco-panoptic-133"],
    "coco-panoptic-201": ["coco-panoptic-133"],
    "coco-panoptic-inst-201": ["coco-panoptic-133"],
    "idd-39": ["cityscapes-19"],
    "idd-39-relabeled": ["idd-39", "cityscapes-19"],
    "idd-40": ["idd-39", "cityscapes-19"],
    "kitti-34": ["kitti-19", "cityscapes-19"],
    "mapillary-public65": ["mapillary-public66"],
    "mapillary-public65-relabeled": ["mapillary-public65", "mapillary-public66"],
    "sunrgbd-37-relabeled": ["sunrgbd-37"],
    "sunrgbd-38": ["sunrgbd-37"],
    "wilddash-19": ["cityscapes-19"],
    "wilddash-34": ["wilddash-19", "cityscapes-19"],
}
# Colour files whose name differs from the taxonomy's (same classes, same order).
COLOR_FILE_ALIASES = {"bdd": "bddsemseg"}
# The `dataset` column of MSeg's relabeling records -> the unrelabeled taxonomies whose labels the records edit
# (cityscapes-34 has the same segments as cityscapes-19, as in `mseg-prepare relabel`).
RECORD_TAXONOMIES = {
    "ade20k": ("ade20k-150",), "ade20k-v1": ("ade20k-150",), "bdd": ("bdd",), "cityscapes": ("cityscapes-19", "cityscapes-34"),
    "cocop": ("coco-panoptic-133",), "cocopanoptic": ("coco-panoptic-133",), "cocopanoptic-v1": ("coco-panoptic-133",),
    "idd": ("idd-39",), "mapillary-public65": ("mapillary-public65",), "sunrgbd": ("sunrgbd-37",),
}
RELABELED_SUFFIX = "-relabeled"


def parse_master_cell(cell: str) -> list[str]:
    cell = cell.strip()
    if not cell:
        return []
    if cell.startswith("{") and cell.endswith("}"):
        return [part.strip() for part in cell[1:-1].split(",") if part.strip()]
    return [cell]


def read_names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_colors(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return np.asarray([[int(v) for v in row] for row in rows], dtype=np.uint8).reshape(-1, 3)


def import_mseg(reference_dir: str | Path) -> tuple[list[Taxonomy], ValidationReport]:
    """All taxonomies found under an mseg-api data folder, universal first."""
    taxonomies, _, report = import_mseg_with_evidence(reference_dir)
    return taxonomies, report


def import_mseg_with_evidence(reference_dir: str | Path) -> tuple[list[Taxonomy], list[MemberEvidence], ValidationReport]:
    """All taxonomies found under an mseg-api data folder (universal first), and the label-set evidence rows."""
    root = Path(reference_dir)
    report = ValidationReport()
    master = root / "class_remapping_files" / "MSeg_master.tsv"
    with master.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    header = rows[0]
    numbered = [(i, r) for i, r in enumerate(rows[1:], start=2) if any(c.strip() for c in r)]
    body_lines, body = [i for i, _ in numbered], [r for _, r in numbered]
    column = {name: i for i, name in enumerate(header)}
    uni_col = column["universal"]
    unames = [r[uni_col].strip() for r in body]

    names = {d.name: read_names(d / f"{d.name}_names.txt")
             for d in sorted((root / "dataset_lists").iterdir()) if (d / f"{d.name}_names.txt").exists()}
    colors = _resolve_colors(root / "dataset_lists", names)

    universal_rows = [i for i, u in enumerate(unames) if u != UNLABELED]
    if universal_rows != list(range(len(universal_rows))):
        report.error(master, None, "universal", "the `unlabeled` row must be the last row")
    universal = Taxonomy(
        name="universal", role="universal", class_names=[unames[i] for i in universal_rows],
        colors=palette(len(universal_rows)),
        extra={"parent": [body[i][column["Parent Category"]].strip() for i in universal_rows],
               "wordnet": [body[i][column["WordNet 3.1 Synset"]].strip() for i in universal_rows],
               "definition": [" ".join(body[i][column[MASTER_NON_DATASET_COLUMNS[3]]].split())
                              for i in universal_rows]},
        description="MSeg universal taxonomy (Lambert et al., CVPR 2020); universal id = MSeg's id",
        source=str(master))
    out = [universal]

    for col_name, ci in column.items():
        if col_name in MASTER_NON_DATASET_COLUMNS:
            continue
        if col_name not in names:
            continue  # e.g. nyudepthv2-37, scannet-37: no names file, so no label ids to map
        classes = names[col_name]
        if col_name in MSEG_TEST_COLUMNS:
            receives: list[list[str]] = [[] for _ in classes]
            for lineno, row, uname in zip(body_lines, body, unames):
                cell = row[ci].strip()
                if cell in classes:
                    receives[classes.index(cell)].append(uname)
                elif cell:
                    report.error(master, lineno, col_name, f"test class {cell!r} is not in {col_name}_names.txt"
                                 f"{did_you_mean(cell, classes)}")
            out.append(Taxonomy(name=col_name, role="test", class_names=classes, colors=colors[col_name],
                                universal=[tuple(r) for r in receives], source=str(master)))
        else:
            target: list[str | None] = [None] * len(classes)
            target_line: dict[int, int] = {}
            for lineno, row, uname in zip(body_lines, body, unames):
                for cls in parse_master_cell(row[ci]):
                    if cls not in classes:
                        report.error(master, lineno, col_name, f"class {cls!r} is not in {col_name}_names.txt"
                                     f"{did_you_mean(cls, classes)}")
                        continue
                    cid = classes.index(cls)
                    if target[cid] is not None:
                        report.error(master, lineno, col_name, f"source class {cls!r} is mapped twice: to "
                                     f"{target[cid]!r} (line {target_line[cid]}) and {uname!r}")
                    target[cid] = uname
                    target_line[cid] = lineno
            for i, t in enumerate(target):
                if t is None:
                    report.error(master, None, col_name, f"class {classes[i]!r} has no universal class")
            out.append(Taxonomy(name=col_name, role="train", class_names=classes, colors=colors[col_name],
                                universal=[(t,) if t else () for t in target], source=str(master)))
    evidence = _add_record_sets(root, out, report)
    mapped = {t.name for t in out}
    for name, classes in names.items():
        if name not in mapped:
            out.append(Taxonomy(name=name, role="raw", class_names=classes, colors=colors[name],
                                source=str(root / "dataset_lists" / name)))
    return out, evidence, report


def read_record_counts(root: Path, report: ValidationReport) -> dict[str, dict[tuple[str, str, str], int]]:
    """unrelabeled taxonomy -> (split, record class, new class) -> segments listed (names in its relabeled taxonomy).
    An empty segment list counts nothing; no records file: no counts."""
    table = root / "relabeling_update_records.tsv"
    counts: dict[str, dict[tuple[str, str, str], int]] = {}
    if not table.is_file():
        return counts
    lines = table.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) != 6:
            report.error(table, lineno, None, f"expected 6 tab-separated columns (record_group, dataset, split, "
                         f"original class, new class, segment list), got {len(cells)}")
            continue
        dataset, split, original, new, segment_list = cells[1:]
        if dataset not in RECORD_TAXONOMIES:
            report.error(table, lineno, None, f"unknown dataset {dataset!r}{did_you_mean(dataset, RECORD_TAXONOMIES)}")
            continue
        if split not in ("train", "val"):
            report.error(table, lineno, None, f"split must be train or val, got {split!r}")
            continue
        listed = root / "relabeled_data" / segment_list
        if not listed.is_file():
            report.error(table, lineno, None, f"segment list {listed} does not exist")
            continue
        segments = sum(1 for entry in listed.read_text(encoding="utf-8").splitlines() if entry.strip())
        for taxonomy in RECORD_TAXONOMIES[dataset]:
            key = (split, original, new)
            counts.setdefault(taxonomy, {})[key] = counts.get(taxonomy, {}).get(key, 0) + segments
    return counts


def _add_record_sets(root: Path, taxonomies: list[Taxonomy], report: ValidationReport) -> list[MemberEvidence]:
    """Give the unrelabeled training taxonomies their label sets (in place) by the rule of
    :mod:`~mseg_semantic.taxonomy.label_set_rule`; returns the evidence rows."""
    by_name = {t.name: t for t in taxonomies}
    evidence: list[MemberEvidence] = []
    for name, counts in sorted(read_record_counts(root, report).items()):
        tax, relabeled = by_name.get(name), by_name.get(name + RELABELED_SUFFIX)
        if tax is None:
            continue  # a folder without this taxonomy: nothing to give sets to
        remap_file = root / "class_remapping_files" / f"{name}_to_{name}{RELABELED_SUFFIX}.tsv"
        if relabeled is None or not remap_file.is_file():
            report.error(root, None, name, f"relabeling records edit {name!r}, but its relabeled taxonomy or "
                         f"{remap_file.name} is missing, so their classes cannot be read")
            continue
        sets, rows, problems = derive_label_sets(tax, relabeled, by_name["universal"], counts)
        for problem in problems:
            report.error(root, None, name, problem)
        _check_sources_against_remap(tax, remap_file, rows, report)
        tax.universal = sets
        evidence += rows
    return evidence


def _check_sources_against_remap(tax: Taxonomy, remap_file: Path, rows: list[MemberEvidence], report: ValidationReport) -> None:
    """The rule finds a record class's source classes by one-hot target (so that it runs on the shipped files too);
    MSeg's remap table must agree."""
    remap = {}
    with remap_file.open(encoding="utf-8", newline="") as handle:
        for row in list(csv.reader(handle, delimiter="\t"))[1:]:
            if len(row) >= 2:
                remap[row[0].strip()] = row[1].strip()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row.record_class, set()).add(row.class_name)
    for record_class, sources in sorted(found.items()):
        expected = {c for c in tax.class_names if remap.get(c) == record_class}
        if expected and expected != sources:
            report.error(remap_file, None, tax.name, f"record class {record_class!r}: the remap table sends "
                         f"{sorted(expected)} there, the one-hot targets {sorted(sources)}")


def _resolve_colors(lists_dir: Path, names: dict[str, list[str]]) -> dict[str, np.ndarray]:
    own: dict[str, np.ndarray] = {}
    for name, classes in names.items():
        file_stem = COLOR_FILE_ALIASES.get(name, name)
        path = lists_dir / name / f"{file_stem}_colors.txt"
        if path.exists():
            arr = read_colors(path)
            if len(arr) == len(classes):
                own[name] = arr
    resolved: dict[str, np.ndarray] = {}

    def resolve(name: str) -> np.ndarray:
        if name in resolved:
            return resolved[name]
        if name in own:
            resolved[name] = own[name]
            return own[name]
        fallback = palette(len(names[name]))
        by_name: dict[str, np.ndarray] = {}
        for src in reversed([s for s in COLOR_SOURCES.get(name, []) if s in names]):
            src_colors = resolve(src)
            by_name.update({cls: src_colors[i] for i, cls in enumerate(names[src])})
        arr = np.stack([by_name.get(cls, fallback[i]) for i, cls in enumerate(names[name])]).astype(np.uint8)
        resolved[name] = arr
        return arr

    return {name: resolve(name) for name in names}


def write_taxonomy_files(taxonomies: list[Taxonomy], out_dir: str | Path, header: str = "") -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    for tax in taxonomies:
        path = out_dir / f"{tax.name}.tsv"
        atomic_write_text(path, header + format_taxonomy(tax))
        written.append(path)
    return written


DATA_HEADER = ("# mseg_semantic taxonomy file (format: see mseg_semantic/taxonomy/files.py and the README).\n"
               "# Authored from MSeg's public taxonomy data (Lambert et al., CVPR 2020), mseg-api, CC BY 4.0.\n")
