"""Remap raw labels to each dataset's semseg taxonomy, in parallel over files, and write the split lists.

Each dataset has a *plan*: for every split, the (image, raw label source, output label) triples, paths
relative to the dataset directory ``<root>/catalog.DATASET_DIRS[taxonomy]``. A process pool converts the
files (one uint8 PNG per image, ids 0..K-1, 255 = unlabeled), each written atomically; outputs that already
exist are kept unless ``force``, so an interrupted run resumes. A raw id (or colour, or polygon label) that
the source taxonomy does not have is reported and the file is not written (``unknown="ignore"`` writes it
with 255 there instead). Datasets distributed in their semseg taxonomy (bdd, voc2012: kind "check") are only
checked, never rewritten: an id out of range fails the file, or with "ignore" is reported and left as it is
(the training converter then refuses it unless told to ignore it too). The list files go to the catalog's
paths only when every file succeeded.
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

from mseg_semantic.data.catalog import DATASET_DIRS, default_list_file
from mseg_semantic.atomic import atomic_write_json, atomic_write_text
from mseg_semantic.prepare import formats
from mseg_semantic.prepare.specs import STATE_DIR, DatasetSpec, get_spec
from mseg_semantic.prepare.tables import IGNORE, RemapTable, load_table

log = logging.getLogger("mseg_semantic.prepare")

SPLITS_DIR = Path(__file__).resolve().parent / "data" / "splits"


class RemapError(RuntimeError):
    pass


@dataclass(frozen=True)
class Job:
    split: str
    image: str  # relative to the dataset directory
    source: str  # raw label (or polygon JSON / .mat / panoptic PNG), relative to the dataset directory
    output: str  # semseg label written, relative to the dataset directory
    extra: tuple = ()  # per-file data the converter needs (COCO: (segment id, category id) pairs)


@dataclass
class Plan:
    kind: str  # converter: ids | colors | palette_or_rgb | coco | polygons | pascal_mat | check
    table: RemapTable | None  # None: labels already in the semseg taxonomy (kind "check")
    jobs: list[Job]
    problems: list[str] = field(default_factory=list)  # images without a label, labels without an image, ...
    num_classes: int = 0


# ----------------------------------------------------------------------------------------------------------
# Plans, one per dataset
# ----------------------------------------------------------------------------------------------------------
def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise RemapError(f"{path} does not exist ({what}); run `mseg-prepare extract` first")


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


def plan_ade20k(base: Path) -> Plan:
    problems: list[str] = []
    jobs: list[Job] = []
    for split, sub in (("train", "training"), ("val", "validation")):
        _require_dir(base / "annotations" / sub, "ADEChallengeData2016 annotations")
        labels = sorted((base / "annotations" / sub).glob("*.png"))
        jobs += _pairs_from_labels(base, split, labels, lambda p, s=sub: base / "images" / s / (p.stem + ".jpg"),
                                   lambda p, s=sub: base / "annotations_semseg150" / s / p.name, problems)
    return Plan("ids", load_table("ade20k-151", "ade20k-150"), jobs, problems)


def plan_bdd(base: Path) -> Plan:
    problems: list[str] = []
    jobs: list[Job] = []
    for split in ("train", "val"):
        _require_dir(base / "seg" / "labels" / split, "BDD seg labels")
        labels = sorted((base / "seg" / "labels" / split).glob("*_train_id.png"))
        jobs += _pairs_from_labels(base, split, labels,
                                   lambda p, s=split: base / "seg" / "images" / s / (p.name[: -len("_train_id.png")] + ".jpg"),
                                   lambda p: p, problems)
    return Plan("check", None, jobs, problems)


def plan_cityscapes(base: Path) -> Plan:
    problems: list[str] = []
    jobs: list[Job] = []
    for split in ("train", "val"):
        _require_dir(base / "gtFine" / split, "Cityscapes gtFine")
        labels = sorted((base / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
        jobs += _pairs_from_labels(
            base, split, labels,
            lambda p, s=split: base / "leftImg8bit" / s / p.parent.name / (p.name.replace("_gtFine_labelIds.png", "_leftImg8bit.png")),
            lambda p, s=split: base / "gtFine_19cls" / s / p.parent.name / p.name, problems)
    return Plan("ids", load_table("cityscapes-34", "cityscapes-19"), jobs, problems)


def plan_coco(base: Path) -> Plan:
    problems: list[str] = []
    jobs: list[Job] = []
    for split in ("train", "val"):
        json_path = base / "annotations" / f"panoptic_{split}2017.json"
        if not json_path.is_file():
            raise RemapError(f"{json_path} does not exist; run `mseg-prepare extract coco` first")
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
    return Plan("coco", load_table("coco-panoptic-201", "coco-panoptic-133"), jobs, problems)


def plan_idd(base: Path) -> Plan:
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
    return Plan("polygons", load_table("idd-40", "idd-39"), jobs, problems)


def plan_mapillary(base: Path) -> Plan:
    problems: list[str] = []
    jobs: list[Job] = []
    for split, sub in (("train", "training"), ("val", "validation")):
        _require_dir(base / sub / "labels", "Mapillary labels")
        labels = sorted((base / sub / "labels").glob("*.png"))
        jobs += _pairs_from_labels(base, split, labels, lambda p, s=sub: base / s / "images" / (p.stem + ".jpg"),
                                   lambda p, s=sub: base / f"{s}_semseg65" / "labels" / p.name, problems)
    return Plan("palette_or_rgb", load_table("mapillary-public66", "mapillary-public65"), jobs, problems)


def plan_sunrgbd(base: Path) -> Plan:
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
    return Plan("ids", load_table("sunrgbd-38", "sunrgbd-37"), jobs, problems)


def camvid_split(stem: str) -> str:
    """SegNet's CamVid split (367/101/233) expressed by sequence and frame number."""
    sequence, frame = stem.split("_", 1)
    number = int(frame.lstrip("f"))
    if sequence == "0016E5" and 7959 <= number <= 8159:
        return "val"
    if sequence == "Seq05VD" or (sequence == "0001TP" and number >= 8550):
        return "test"
    return "train"


def plan_camvid(base: Path) -> Plan:
    problems: list[str] = []
    _require_dir(base / "Labels32-RGB", "CamVid colour labels")
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
    return Plan("colors", load_table("camvid-32", "camvid-11"), jobs, problems)


def read_id_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def plan_kitti(base: Path) -> Plan:
    problems: list[str] = []
    _require_dir(base / "training" / "semantic", "KITTI semantic labels")
    val = set(read_id_list(SPLITS_DIR / "kitti-19_val.txt"))
    jobs = []
    for label in sorted((base / "training" / "semantic").glob("*.png")):
        split = "val" if label.stem in val else "train"
        jobs += _pairs_from_labels(base, split, [label], lambda p: base / "training" / "image_2" / p.name,
                                   lambda p: base / "training" / "label19" / p.name, problems)
    return Plan("ids", load_table("kitti-34", "kitti-19"), jobs, problems)


def plan_pascal_context(base: Path) -> Plan:
    problems: list[str] = []
    jobs = []
    for split in ("train", "val"):
        ids_file = base / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            raise RemapError(f"{ids_file} does not exist; run `mseg-prepare extract pascal-context` first")
        for image_id in read_id_list(ids_file):
            mat = base / "trainval" / f"{image_id}.mat"
            if not mat.is_file():
                problems.append(f"{split}: no PASCAL Context label {_rel(mat, base)}")
                continue
            jobs += _pairs_from_labels(base, split, [mat], lambda p: base / "JPEGImages" / f"{p.stem}.jpg",
                                       lambda p: base / "Segmentation_GT_60cls" / f"{p.stem}.png", problems)
    return Plan("pascal_mat", load_table("pascal-context-460", "pascal-context-60"), jobs, problems)


def plan_voc2012(base: Path) -> Plan:
    problems: list[str] = []
    val_file = base / "ImageSets" / "Segmentation" / "val.txt"
    if not val_file.is_file():
        raise RemapError(f"{val_file} does not exist; run `mseg-prepare extract voc2012` first")
    _require_dir(base / "SegmentationClassAug", "VOC SegmentationClassAug labels")
    val = set(read_id_list(val_file))
    jobs = []
    for label in sorted((base / "SegmentationClassAug").glob("*.png")):
        split = "val" if label.stem in val else "train"
        jobs += _pairs_from_labels(base, split, [label], lambda p: base / "JPEGImages" / f"{p.stem}.jpg", lambda p: p, problems)
    return Plan("check", None, jobs, problems)


def plan_scannet(base: Path) -> Plan:
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
        raise RemapError(f"no ScanNet frames found under {base}; run `mseg-prepare extract scannet` first")
    return Plan("ids", load_table("scannet-41", "scannet-20"), jobs, problems)


def plan_wilddash(base: Path) -> Plan:
    problems: list[str] = []
    _require_dir(base / "wd_val_01", "WildDash wd_val_01")

    def image_of(label: Path) -> Path:
        stem = label.name[: -len("_labelIds.png")]
        png = label.parent / f"{stem}.png"
        return png if png.is_file() else label.parent / f"{stem}.jpg"

    labels = sorted((base / "wd_val_01").glob("*_labelIds.png"))
    jobs = _pairs_from_labels(base, "val", labels, image_of, lambda p: base / "wd_val_19class" / p.name, problems)
    return Plan("ids", load_table("wilddash-34", "wilddash-19"), jobs, problems)


PLANNERS: dict[str, Callable[[Path], Plan]] = {
    "ade20k": plan_ade20k, "bdd": plan_bdd, "cityscapes": plan_cityscapes, "coco": plan_coco, "idd": plan_idd,
    "mapillary": plan_mapillary, "sunrgbd": plan_sunrgbd, "camvid": plan_camvid, "kitti": plan_kitti,
    "pascal-context": plan_pascal_context, "voc2012": plan_voc2012, "scannet": plan_scannet, "wilddash": plan_wilddash,
}


def make_plan(spec: DatasetSpec, root: Path) -> Plan:
    from mseg_semantic.taxonomy import load_class_names

    plan = PLANNERS[spec.key](Path(root) / DATASET_DIRS[spec.taxonomy])
    plan.num_classes = len(load_class_names(spec.taxonomy))
    return plan


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


def _remap_one(job: Job) -> tuple[str, str, dict]:
    """(status, message, unknown) with status written | kept | failed."""
    base = Path(_CTX["base"])
    kind = _CTX["kind"]
    out = base / job.output
    if kind != "check" and out.is_file() and not _CTX["force"]:
        return "kept", "", {}
    try:
        label, unknown = convert(kind, _CTX["table"], base / job.source, job.extra, _CTX["num_classes"])
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return "failed", f"{job.source}: {exc}", {}
    if unknown and _CTX["unknown"] == "error":
        shown = ", ".join(f"{k} ({v} px)" for k, v in list(unknown.items())[:8])
        return "failed", f"{job.source}: raw values not in {_CTX['source_taxonomy']}: {shown}", unknown
    if kind == "check":
        return "written", "", unknown
    formats.write_label(out, label)
    return "written", "", unknown


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


def remap_dataset(key: str, root: Path, workers: int | None = None, unknown: str = "error", force: bool = False,
                  progress: bool = True) -> dict:
    """Remap one dataset; returns the report (also written to ``<root>/.mseg_prepare/reports/remap_<key>.json``)."""
    if unknown not in ("error", "ignore"):
        raise ValueError(f"unknown={unknown!r}; valid: 'error' (report, do not write) or 'ignore' (report, write 255)")
    spec = get_spec(key)
    root = Path(root)
    plan = make_plan(spec, root)
    base = root / DATASET_DIRS[spec.taxonomy]
    context = {"base": str(base), "kind": plan.kind, "table": plan.table, "num_classes": plan.num_classes,
               "force": force, "unknown": unknown, "source_taxonomy": spec.raw_taxonomy or spec.taxonomy}
    started = time.time()
    results = run_jobs(plan.jobs, context, workers or default_workers(), progress, f"remap {key}")
    failed = [message for (status, message, _) in results if status == "failed"]
    unknown_total: dict[str, int] = {}
    for _, _, found in results:
        for value, count in found.items():
            unknown_total[str(value)] = unknown_total.get(str(value), 0) + count
    counts = {split: sum(1 for j in plan.jobs if j.split == split) for split in sorted({j.split for j in plan.jobs})}
    report = {
        "dataset": key, "taxonomy": spec.taxonomy, "files": len(plan.jobs), "splits": counts,
        "written": sum(1 for r in results if r[0] == "written"), "kept": sum(1 for r in results if r[0] == "kept"),
        "failed": len(failed), "failures": failed[:200], "problems": plan.problems[:200],
        "unknown_values_pixels": unknown_total, "unknown_policy": unknown, "seconds": round(time.time() - started, 1),
    }
    report_path = write_report(root, f"remap_{key}", report)
    if failed or plan.problems:
        first = (failed or plan.problems)[0]
        raise RemapError(f"{key}: {len(failed)} file(s) failed, {len(plan.problems)} problem(s) in the raw data "
                         f"(first: {first}); details in {report_path}")
    for split in counts:
        pairs = [(j.image, j.output) for j in plan.jobs if j.split == split]
        write_list_file(default_list_file(root, spec.taxonomy, split), pairs)
    log.info("%s: %s labels remapped to %s (%s), lists in %s", key, len(plan.jobs), spec.taxonomy,
             ", ".join(f"{s} {n}" for s, n in counts.items()), root / "dataset_lists" / spec.taxonomy / "list")
    return report
