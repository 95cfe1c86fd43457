"""MSeg's relabeling records: which segment of which image moves from one class to another.

MSeg publishes 381 records (dataset, split, original class, new class, segment list); each segment list names
segments as ``IMAGEID_SEGMENTID.png`` (the meaning of both parts depends on the dataset, see
``mseg_semantic.prepare.relabel``). The project ships them compiled into one gzipped TSV per dataset under
``prepare/data/relabeling/`` (columns: split, original class, new class, segment list, entry); the same
records can be read from a directory laid out like mseg-api's (``relabeling_update_records.tsv`` plus
``relabeled_data/``) with ``--records DIR``. Regenerate the shipped files with
``python -m mseg_semantic.prepare.records REFERENCE_DIR``.
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from mseg_semantic.atomic import atomic_write_bytes
from mseg_semantic.errors import UserError, not_utf8_error

RECORDS_DIR = Path(__file__).resolve().parent / "data" / "relabeling"

# record "dataset" column -> our dataset key
RECORD_DATASETS = {
    "ade20k": "ade20k", "ade20k-v1": "ade20k", "bdd": "bdd", "cityscapes": "cityscapes", "cocop": "coco",
    "cocopanoptic": "coco", "cocopanoptic-v1": "coco", "idd": "idd", "mapillary-public65": "mapillary", "sunrgbd": "sunrgbd",
}
HEADER = ("split", "original_class", "new_class", "segment_list", "entry")


class RecordsError(UserError):
    pass


@dataclass(frozen=True)
class SegmentRecord:
    split: str  # train | val
    original: str  # class name in the relabeled taxonomy ("unlabeled" = 255)
    new: str
    segment_list: str  # the list file it came from (for reports)
    entry: str  # IMAGEID_SEGMENTID.ext as written in the list


def read_reference_records(reference_dir: str | os.PathLike) -> dict[str, list[SegmentRecord]]:
    """dataset key -> records, from an mseg-api style directory."""
    reference_dir = Path(reference_dir)
    table = reference_dir / "relabeling_update_records.tsv"
    if not table.is_file():
        raise RecordsError(f"{table} does not exist (expected relabeling_update_records.tsv and relabeled_data/ in {reference_dir})")
    out: dict[str, list[SegmentRecord]] = {}
    lines = _utf8_text(table).splitlines()
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cells = line.rstrip("\r").split("\t")
        if len(cells) != 6:
            raise RecordsError(f"{table}:{lineno}: expected 6 tab-separated columns, got {len(cells)}")
        _, dataset, split, original, new, list_file = cells
        if dataset not in RECORD_DATASETS:
            raise RecordsError(f"{table}:{lineno}: unknown dataset {dataset!r}; known: {', '.join(RECORD_DATASETS)}")
        if split not in ("train", "val"):
            raise RecordsError(f"{table}:{lineno}: split must be train or val, got {split!r}")
        list_path = reference_dir / "relabeled_data" / list_file
        if not list_path.is_file():
            raise RecordsError(f"{table}:{lineno}: segment list {list_path} does not exist")
        for entry in _utf8_text(list_path).splitlines():
            entry = entry.strip()
            if entry:
                out.setdefault(RECORD_DATASETS[dataset], []).append(SegmentRecord(split, original, new, list_file, entry))
    return out


def write_compiled(records: dict[str, list[SegmentRecord]], out_dir: str | os.PathLike = RECORDS_DIR) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, items in sorted(records.items()):
        path = out_dir / f"{key}.tsv.gz"
        lines = ["# MSeg relabeling records (Lambert et al., CVPR 2020; mseg-api, CC BY 4.0), compiled by mseg_semantic.",
                 "\t".join(HEADER)]
        lines += ["\t".join((r.split, r.original, r.new, r.segment_list, r.entry)) for r in items]
        # mtime=0: identical input gives identical bytes
        atomic_write_bytes(path, gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0))
        written.append(path)
    return written


def _utf8_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordsError(str(not_utf8_error(path, exc, "a relabeling records file"))) from None


def _compiled_text(path: Path) -> str:
    """The text of a compiled records file; a cut, damaged or foreign file is one RecordsError naming it."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise RecordsError(f"{path}: not a complete gzip file ({type(exc).__name__}: {exc}); the records shipped with "
                           f"the package are used without --records, or compile a records directory again "
                           f"(python -m mseg_semantic.prepare.records REFERENCE_DIR OUT_DIR)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordsError(str(not_utf8_error(path, exc, "the decompressed records"))) from None


def read_compiled(key: str, records_dir: str | os.PathLike = RECORDS_DIR) -> list[SegmentRecord]:
    path = Path(records_dir) / f"{key}.tsv.gz"
    if not path.is_file():
        raise RecordsError(f"no relabeling records for {key!r} at {path}")
    items = []
    for lineno, line in enumerate(_compiled_text(path).split("\n"), 1):
        if not line or line.startswith("#") or line == "\t".join(HEADER):
            continue
        cells = line.split("\t")
        if len(cells) != len(HEADER):
            raise RecordsError(f"{path}:{lineno}: expected {len(HEADER)} columns, got {len(cells)}")
        items.append(SegmentRecord(*cells))
    return items


def load_records(key: str, records_dir: str | os.PathLike | None = None) -> list[SegmentRecord]:
    """The records of one dataset: shipped ones, or from an mseg-api style directory."""
    if records_dir is None:
        return read_compiled(key)
    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        state = "is a file" if records_dir.exists() else "does not exist"
        raise RecordsError(f"--records {records_dir}: {state}; give a directory laid out like mseg-api's "
                           f"(relabeling_update_records.tsv and relabeled_data/) or of compiled KEY.tsv.gz files")
    if (records_dir / "relabeling_update_records.tsv").is_file():
        return read_reference_records(records_dir).get(key, [])
    return read_compiled(key, records_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python -m mseg_semantic.prepare.records REFERENCE_DIR [OUT_DIR]", file=sys.stderr)
        return 2
    records = read_reference_records(argv[0])
    for path in write_compiled(records, argv[1] if len(argv) == 2 else RECORDS_DIR):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
