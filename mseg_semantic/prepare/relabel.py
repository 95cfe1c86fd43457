"""Produce the ``-relabeled`` label sets: convert each semseg label to the relabeled taxonomy, then apply
MSeg's segment records (``mseg_semantic.prepare.records``).

For every image: label -> relabeled taxonomy through ``X_to_X-relabeled`` (class names that MSeg split or
renamed), then, for each record naming one of the image's segments, the pixels of that segment whose source
class is the record's original class get the new class. What a segment is depends on the dataset (the second
part of ``IMAGEID_SEGMENTID``):

==============  ===========================================================================================
ade20k          instance id = blue channel of ``ADE20K_2016_07_26/.../IMAGE_seg.png``, resized (nearest) to the
                challenge label's size
bdd, sunrgbd    a semseg class id: the whole region of that class in the image's semseg label
cityscapes,idd  index (or ``id`` field) of the object in ``gtFine/SPLIT/SEQ/STEM_gtFine_polygons.json``;
                entries read ``seqSEQ_STEM_leftImg8bit_INDEX``
coco            panoptic segment id (R + 256 G + 256^2 B of ``annotations/panoptic_SPLIT2017/IMAGE.png``)
mapillary       value of ``{training,validation}/instances/IMAGE.png``; entries read ``mapillary_IMAGE_ID``
==============  ===========================================================================================

A record's original class is a relabeled-taxonomy name; the source classes the table maps to it are its
pixels (Cityscapes/IDD records say ``rider_other`` for the source class ``rider``, see
``ORIGINAL_CLASS_ALIASES``). Reported, never silently applied: a record whose image is not in the split list,
whose segment does not exist (or is empty), or whose pixels are not of the original class. For datasets whose
segments come from the same annotation as the label (coco, bdd, mapillary, sunrgbd) every pixel must be of
the original class; for polygon or resized instance masks (ade20k, cityscapes, idd) more than half of them.
Mismatched records are not applied. MSeg overwrote the whole mask; here only pixels of the original class
change, so a polygon that overlaps a neighbour of another class leaves the neighbour alone.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from mseg_semantic.data.catalog import DATASET_DIRS, default_list_file
from mseg_semantic.prepare import formats
from mseg_semantic.prepare.records import load_records
from mseg_semantic.prepare.remap import Job, run_jobs, write_list_file, write_report, default_workers, _CTX
from mseg_semantic.prepare.specs import get_spec
from mseg_semantic.prepare.tables import IGNORE, load_table

log = logging.getLogger("mseg_semantic.prepare")

STRICT = {"coco", "bdd", "mapillary", "sunrgbd"}
ADE_INSTANCE_DIR = "ADE20K/ADE20K_2016_07_26"


class RelabelError(RuntimeError):
    pass


def _swap(old: str, new: str) -> Callable[[str], str]:
    def swap(path: str) -> str:
        if old not in path:
            raise RelabelError(f"label path {path!r} does not contain {old!r}; was the list written by `mseg-prepare remap`?")
        return path.replace(old, new, 1)
    return swap


def _same(path: str) -> str:
    return path


@dataclass(frozen=True)
class RelabelTarget:
    source: str  # taxonomy of the labels read
    target: str  # relabeled taxonomy written
    base_list: str  # taxonomy whose split lists give the images
    source_label: Callable[[str], str]  # base-list label path -> label read
    output_label: Callable[[str], str]  # base-list label path -> label written


TARGETS: dict[str, list[RelabelTarget]] = {
    "ade20k": [RelabelTarget("ade20k-150", "ade20k-150-relabeled", "ade20k-150", _same,
                             _swap("annotations_semseg150/", "annotations_semseg150_relabeled/"))],
    "bdd": [RelabelTarget("bdd", "bdd-relabeled", "bdd", _same, _swap("seg/labels/", "seg_relabeled/labels/"))],
    "cityscapes": [
        RelabelTarget("cityscapes-19", "cityscapes-19-relabeled", "cityscapes-19", _same, _swap("gtFine_19cls/", "gtFine_19cls_relabeled/")),
        RelabelTarget("cityscapes-34", "cityscapes-34-relabeled", "cityscapes-19", _swap("gtFine_19cls/", "gtFine/"),
                      _swap("gtFine_19cls/", "gtFine_34cls_relabeled/")),
    ],
    "coco": [RelabelTarget("coco-panoptic-133", "coco-panoptic-133-relabeled", "coco-panoptic-133", _same,
                           _swap("semantic_annotations133/", "semantic_relabeled133/"))],
    "idd": [RelabelTarget("idd-39", "idd-39-relabeled", "idd-39", _same, _swap("gtFine39/", "gtFine39_relabeled/"))],
    "mapillary": [RelabelTarget("mapillary-public65", "mapillary-public65-relabeled", "mapillary-public65", _same,
                                _swap("_semseg65/", "_semseg65_relabeled/"))],
    "sunrgbd": [RelabelTarget("sunrgbd-37", "sunrgbd-37-relabeled", "sunrgbd-37", _same, _swap("semseg-label37/", "semseg-relabeled37/"))],
}


# ----------------------------------------------------------------------------------------------------------
# Segment entries and image keys
# ----------------------------------------------------------------------------------------------------------
def parse_entry(dataset: str, entry: str) -> tuple[str, int]:
    """(image key, segment id) of a segment-list entry such as ``ADE_train_00000004_70.png``."""
    stem = entry.rsplit(".", 1)[0]
    try:
        head, segment = stem.rsplit("_", 1)
        segment_id = int(segment)
    except ValueError:
        raise RelabelError(f"{dataset}: segment entry {entry!r} does not end in _SEGMENTID") from None
    if dataset in ("cityscapes", "idd"):
        sequence, _, rest = head.partition("_")
        if not sequence.startswith("seq") or not rest:
            raise RelabelError(f"{dataset}: segment entry {entry!r} does not start with seqSEQUENCE_")
        return f"{sequence[3:]}/{rest}", segment_id
    if dataset == "mapillary":
        if not head.startswith("mapillary_"):
            raise RelabelError(f"mapillary: segment entry {entry!r} does not start with mapillary_")
        return head[len("mapillary_"):], segment_id
    return head, segment_id


def image_key(dataset: str, image: str) -> str:
    path = Path(image)
    if dataset in ("cityscapes", "idd"):
        return f"{path.parent.name}/{path.stem}"
    return path.stem


# ----------------------------------------------------------------------------------------------------------
# Segment masks (worker side)
# ----------------------------------------------------------------------------------------------------------
def segment_mask(dataset: str, base: Path, split: str, image: str, segment_id: int, base_label: Callable[[], np.ndarray],
                 extra: dict) -> np.ndarray | None:
    """Boolean mask of one segment at the label's resolution, or None when the segment does not exist."""
    if dataset in ("bdd", "sunrgbd"):
        mask = base_label() == segment_id
    elif dataset in ("cityscapes", "idd"):
        path = Path(image)
        stem = path.stem[: -len("_leftImg8bit")] if path.stem.endswith("_leftImg8bit") else path.stem
        polygons = base / "gtFine" / split / path.parent.name / f"{stem}_gtFine_polygons.json"
        data = extra.get("polygons")
        if data is None:
            data = extra["polygons"] = formats.read_polygon_json(polygons)
        obj = formats.polygon_object(data, segment_id)
        if obj is None or len(obj.get("polygon") or []) < 1:
            return None
        mask = formats.polygon_mask(obj["polygon"], int(data["imgHeight"]), int(data["imgWidth"]))
    elif dataset == "coco":
        ids = extra.get("panoptic")
        if ids is None:
            png = base / "annotations" / f"panoptic_{split}2017" / f"{Path(image).stem}.png"
            ids = extra["panoptic"] = formats.panoptic_segment_ids(formats.read_rgb(png))
        mask = ids == segment_id
    elif dataset == "mapillary":
        ids = extra.get("instances")
        if ids is None:
            sub = "training" if split == "train" else "validation"
            ids = extra["instances"] = formats.read_label_ids(base / sub / "instances" / f"{Path(image).stem}.png")
        mask = ids == segment_id
    elif dataset == "ade20k":
        blue = extra.get("instances")
        if blue is None:
            seg_png = extra["instance_png"]
            rgb = formats.read_rgb(seg_png)
            height, width = base_label().shape
            blue = extra["instances"] = cv2.resize(rgb[..., 2], (width, height), interpolation=cv2.INTER_NEAREST)
        mask = blue == segment_id
    else:
        raise RelabelError(f"no segment locator for dataset {dataset!r}")
    return mask if mask.any() else None


# ----------------------------------------------------------------------------------------------------------
# Worker
# ----------------------------------------------------------------------------------------------------------
# MSeg's records call the original class of Cityscapes' and IDD's rider segments "rider_other", a class their
# relabeled taxonomies never produce (the table sends the source class "rider" to bicyclist / motorcyclist by
# default). Such records are checked against the source class named here.
ORIGINAL_CLASS_ALIASES = {("cityscapes", "rider_other"): "rider", ("idd", "rider_other"): "rider"}


@dataclass(frozen=True)
class Update:
    record: int  # index into the dataset's record list
    original: tuple[int, ...]  # source-label ids whose pixels count as the record's original class
    new: int  # id in the relabeled taxonomy
    segment: int


def original_source_ids(dataset: str, table, name: str) -> tuple[int, ...]:
    """Source ids of a record's original class: those the table maps to it, else its alias's id."""
    if name in table.target_names:
        target = table.target_names.index(name)
        ids = tuple(i for i, t in enumerate(table.mapping) if t == target)
        if ids:
            return ids
    alias = ORIGINAL_CLASS_ALIASES.get((dataset, name))
    if alias is not None and alias in table.source_names:
        return (table.source_names.index(alias),)
    raise RelabelError(f"{dataset}: no class of {table.source} becomes the record's original class {name!r} in "
                       f"{table.target}; the record cannot be checked")


def _relabel_one(job: Job) -> tuple[str, str, list[tuple[int, str, int, int]]]:
    """(status, message, per-record outcomes (record, status, segment px, original-class px))."""
    base = Path(_CTX["base"])
    dataset = _CTX["dataset"]
    updates, instance_png, base_label_path = job.extra
    try:
        source = formats.read_label_ids(base / job.source)
        label, unknown = formats.apply_lut(source, _CTX["lut"])
        if unknown:
            return "failed", f"{job.source}: ids not in {_CTX['source']}: {sorted(unknown)[:10]}", []
        cache: dict = {"instance_png": instance_png}
        base_cache: list = []

        def base_label() -> np.ndarray:
            if not base_cache:
                base_cache.append(source if base_label_path == job.source else formats.read_label_ids(base / base_label_path))
            return base_cache[0]

        outcomes = []
        for update in updates:
            mask = segment_mask(dataset, base, job.split, job.image, update.segment, base_label, cache)
            if mask is None:
                outcomes.append((update.record, "not_found", 0, 0))
                continue
            if mask.shape != label.shape:
                return "failed", f"{job.image}: segment mask {mask.shape} and label {label.shape} differ in size", []
            size = int(mask.sum())
            of_original = mask & np.isin(source, update.original)
            count = int(of_original.sum())
            ok = count == size if _CTX["strict"] else 2 * count > size
            if not ok:
                outcomes.append((update.record, "mismatch", size, count))
                continue
            label[of_original] = update.new
            outcomes.append((update.record, "applied", size, count))
        formats.write_label(base / job.output, label)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "failed", f"{job.image}: {exc}", []
    return "written", "", outcomes


# ----------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------
def _read_list(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise RelabelError(f"{path} does not exist; run `mseg-prepare remap` first")
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cells = line.split()
        if len(cells) != 2:
            raise RelabelError(f"{path}:{lineno}: expected 'image label', got {line!r}")
        pairs.append((cells[0], cells[1]))
    return pairs


def ade20k_instance_index(root: Path) -> dict[str, Path]:
    directory = Path(root) / ADE_INSTANCE_DIR / "images"
    return {p.name[: -len("_seg.png")]: p for p in directory.rglob("*_seg.png")} if directory.is_dir() else {}


def relabel_dataset(key: str, root: Path, workers: int | None = None, records_dir=None, strict: bool = False,
                    progress: bool = True) -> dict:
    """Write every relabeled taxonomy of a training dataset plus its split lists; returns the report."""
    spec = get_spec(key)
    if key not in TARGETS:
        raise RelabelError(f"{key} is a {spec.role} dataset without relabeling; relabeled datasets: {', '.join(TARGETS)}")
    root = Path(root)
    records = load_records(key, records_dir)
    keyed = [(record, *parse_entry(key, record.entry)) for record in records]
    instance_index: dict[str, Path] = {}
    if key == "ade20k":
        from mseg_semantic.prepare.download import ManualStepRequired, manual_message
        from mseg_semantic.prepare.extract import extract_dataset

        extract_dataset(spec, root, progress=progress, only_needed_for=("relabel",))  # the instance archive may arrive late
        instance_index = ade20k_instance_index(root)
        if not instance_index:
            raise ManualStepRequired("ade20k: relabeling needs the instance masks of the full ADE20K release, not found under "
                               f"{root / ADE_INSTANCE_DIR}.\n" + manual_message(spec, spec.archive("ADE20K_2016_07_26.zip"), root))
    report: dict = {"dataset": key, "records": len(records), "targets": {}}
    started = time.time()
    failures_total = 0
    for target in TARGETS[key]:
        table = load_table(target.source, target.target)
        target_ids = {name: i for i, name in enumerate(table.target_names)}

        def class_id(name: str) -> int:
            if name == "unlabeled":
                return IGNORE
            if name not in target_ids:
                raise RelabelError(f"{key}: record class {name!r} is not in taxonomy {target.target}")
            return target_ids[name]

        origin_cache: dict[str, tuple[int, ...]] = {}

        def originals(name: str) -> tuple[int, ...]:
            if name not in origin_cache:
                origin_cache[name] = original_source_ids(key, table, name)
            return origin_cache[name]

        base = root / DATASET_DIRS[target.target]
        outcomes: dict[int, tuple[str, int, int]] = {}
        image_missing: list[int] = []
        failures: list[str] = []
        target_counts = {}
        for split in ("train", "val"):
            pairs = _read_list(default_list_file(root, target.base_list, split))
            by_image: dict[str, list[Update]] = defaultdict(list)
            for index, (record, image, segment) in enumerate(keyed):
                if record.split == split:
                    by_image[image].append(Update(index, originals(record.original), class_id(record.new), segment))
            listed = set()
            jobs = []
            for image, label in pairs:
                ikey = image_key(key, image)
                listed.add(ikey)
                updates = tuple(by_image.get(ikey, ()))
                instance_png = None
                if updates and key == "ade20k":
                    instance_png = instance_index.get(ikey)
                    if instance_png is None:
                        for update in updates:
                            outcomes[update.record] = ("not_found", 0, 0)
                        updates = ()
                jobs.append(Job(split, image, target.source_label(label), target.output_label(label),
                                (updates, instance_png, label)))
            image_missing += [u.record for image, items in by_image.items() if image not in listed for u in items]
            context = {"base": str(base), "dataset": key, "lut": table.lut, "strict": key in STRICT, "source": target.source}
            results = run_jobs(jobs, context, workers or default_workers(), progress, f"relabel {target.target} {split}",
                               fn=_relabel_one)
            for status, message, per_record in results:
                if status == "failed":
                    failures.append(message)
                for record, outcome, size, count in per_record:
                    outcomes[record] = (outcome, size, count)
            target_counts[split] = len(jobs)
            if not failures:
                write_list_file(default_list_file(root, target.target, split), [(j.image, j.output) for j in jobs])
        statuses = defaultdict(int)
        for outcome, _, _ in outcomes.values():
            statuses[outcome] += 1

        def describe(index: int) -> dict:
            record = records[index]
            outcome, size, count = outcomes.get(index, ("image_not_in_list", 0, 0))
            return {"entry": record.entry, "split": record.split, "original": record.original, "new": record.new,
                    "segment_list": record.segment_list, "status": outcome, "segment_pixels": size, "original_pixels": count}

        problems = [i for i, (outcome, _, _) in sorted(outcomes.items()) if outcome != "applied"] + image_missing
        report["targets"][target.target] = {
            "images": target_counts, "applied": statuses["applied"], "not_found": statuses["not_found"],
            "mismatch": statuses["mismatch"], "image_not_in_list": len(image_missing), "failed_files": len(failures),
            "failures": failures[:100], "problem_records": [describe(i) for i in problems[:500]],
        }
        failures_total += len(failures)
    report["seconds"] = round(time.time() - started, 1)
    report_path = write_report(root, f"relabel_{key}", report)
    if failures_total:
        raise RelabelError(f"{key}: {failures_total} label file(s) could not be relabeled; details in {report_path}")
    for name, part in report["targets"].items():
        reported = part["not_found"] + part["mismatch"] + part["image_not_in_list"]
        log.info("%s: %d segments relabeled, %d records reported (not found %d, class mismatch %d, image not listed %d); %s",
                 name, part["applied"], reported, part["not_found"], part["mismatch"], part["image_not_in_list"], report_path)
        if strict and reported:
            raise RelabelError(f"{name}: {reported} relabeling record(s) could not be applied (--strict); details in {report_path}")
    return report
