"""Produce the ``-relabeled`` label sets: convert each semseg label to the relabeled taxonomy, then apply
MSeg's segment records (``mseg_semantic.prepare.records``).

For every image: label -> relabeled taxonomy through ``X_to_X-relabeled`` (class names that MSeg split or
renamed), then each record naming one of the image's segments moves that segment to the record's new class.
What a segment is depends on the dataset (the second part of ``IMAGEID_SEGMENTID``):

==============  ===========================================================================================
ade20k          instance id = blue channel of the full release's ``.../IMAGE_seg.png``, resized (nearest) to
                the challenge label's size
bdd, sunrgbd    a semseg class id: the whole region of that class in the image's semseg label
cityscapes,idd  index (or ``id`` field) of the object in ``gtFine/SPLIT/SEQ/STEM_gtFine_polygons.json``;
                entries read ``seqSEQ_STEM_leftImg8bit_INDEX``
coco            panoptic segment id (R + 256 G + 256^2 B of ``annotations/panoptic_SPLIT2017/IMAGE.png``)
mapillary       value of ``{training,validation}[/v1.2]/instances/IMAGE.png``; entries read ``mapillary_IMAGE_ID``
==============  ===========================================================================================

Two modes (``mode``), both computed for every image so the report can say how many pixels they differ by:

- ``checked`` (default): only the segment's pixels that carry the record's original class change, and a
  record is applied only when its segment has that class: every pixel of it for coco, bdd, mapillary and
  sunrgbd (segments from the label's own annotation), more than half for the polygon or resized instance
  masks of ade20k, cityscapes and idd. A polygon that overlaps a neighbour of another class leaves the
  neighbour alone. Cityscapes' and IDD's records name their original class ``rider_other``, which their
  tables never produce; those are checked against the source class ``rider`` (``ORIGINAL_CLASS_ALIASES``).
- ``mseg``: MSeg's own output, pixel for pixel (mseg-api ``mseg_write_relabeled_segments.py``): on ade20k,
  cityscapes and idd the whole segment mask gets the new class whatever it covered; on coco, bdd, mapillary
  and sunrgbd the mask is overwritten when every pixel of it has the original class in the label as relabeled
  so far (MSeg stopped with an assertion otherwise; here the record is reported and skipped). Records apply
  in MSeg's order, later ones over earlier ones. ade20k needs the 2016 full release MSeg used.

Reported in both modes, never applied silently: records whose image is not in the split list, whose segment
does not exist (or is empty), or (checked mode, and mseg mode's pure-segment datasets) whose pixels are not of
the original class.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from mseg_semantic.errors import EXIT_BAD_INPUT, EXIT_CHECKS_FAILED
from mseg_semantic.prepare import formats
from mseg_semantic.prepare.layouts import MAPILLARY_SPLITS, ade20k_instance_maps, mapillary_annotation_dir
from mseg_semantic.prepare.records import SegmentRecord, load_records
from mseg_semantic.prepare.remap import _CTX, Job, default_workers, run_jobs, write_list_file, write_report
from mseg_semantic.prepare.specs import ADE20K_FULL_2016, DatasetSpec, dataset_dir, get_spec, list_file
from mseg_semantic.prepare.tables import IGNORE, RemapTable, load_table

log = logging.getLogger("mseg_semantic.prepare")

RELABEL_MODES = ("checked", "mseg")
# segments from the label's own annotation: MSeg required every pixel to have the original class
PURE_SEGMENT_DATASETS = frozenset({"coco", "bdd", "mapillary", "sunrgbd"})
# polygon or resized instance masks: MSeg overwrote the whole mask without a check
WHOLE_MASK_DATASETS = frozenset({"ade20k", "cityscapes", "idd"})
SPLITS = ("train", "val")


class RelabelError(RuntimeError):
    """Labels could not be relabeled, or (--strict) records could not be applied."""

    exit_code = EXIT_CHECKS_FAILED


class RelabelInputError(RelabelError):
    """Bad input: no list to relabel, a record naming a class the taxonomy lacks, a bad mode."""

    exit_code = EXIT_BAD_INPUT


def _swap(*pairs: tuple[str, str]) -> Callable[[str], str]:
    """Label path -> another label path, by the first of ``(old, new)`` whose ``old`` it contains."""
    def swap(path: str) -> str:
        for old, new in pairs:
            if old in path:
                return path.replace(old, new, 1)
        wanted = " or ".join(repr(old) for old, _ in pairs)
        raise RelabelInputError(f"label path {path!r} does not contain {wanted}; was the list written by `mseg-prepare remap`?")
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
                             _swap(("annotations_semseg150/", "annotations_semseg150_relabeled/")))],
    "bdd": [RelabelTarget("bdd", "bdd-relabeled", "bdd", _same,
                          _swap(("labels/sem_seg/masks/", "labels/sem_seg_relabeled/masks/"), ("seg/labels/", "seg_relabeled/labels/")))],
    "cityscapes": [
        RelabelTarget("cityscapes-19", "cityscapes-19-relabeled", "cityscapes-19", _same,
                      _swap(("gtFine_19cls/", "gtFine_19cls_relabeled/"))),
        RelabelTarget("cityscapes-34", "cityscapes-34-relabeled", "cityscapes-19", _swap(("gtFine_19cls/", "gtFine/")),
                      _swap(("gtFine_19cls/", "gtFine_34cls_relabeled/"))),
    ],
    "coco": [RelabelTarget("coco-panoptic-133", "coco-panoptic-133-relabeled", "coco-panoptic-133", _same,
                           _swap(("semantic_annotations133/", "semantic_relabeled133/")))],
    "idd": [RelabelTarget("idd-39", "idd-39-relabeled", "idd-39", _same, _swap(("gtFine39/", "gtFine39_relabeled/")))],
    "mapillary": [RelabelTarget("mapillary-public65", "mapillary-public65-relabeled", "mapillary-public65", _same,
                                _swap(("_semseg65/", "_semseg65_relabeled/")))],
    "sunrgbd": [RelabelTarget("sunrgbd-37", "sunrgbd-37-relabeled", "sunrgbd-37", _same,
                              _swap(("semseg-label37/", "semseg-relabeled37/")))],
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
        raise RelabelInputError(f"{dataset}: segment entry {entry!r} does not end in _SEGMENTID") from None
    if dataset in ("cityscapes", "idd"):
        sequence, _, rest = head.partition("_")
        if not sequence.startswith("seq") or not rest:
            raise RelabelInputError(f"{dataset}: segment entry {entry!r} does not start with seqSEQUENCE_")
        return f"{sequence[3:]}/{rest}", segment_id
    if dataset == "mapillary":
        if not head.startswith("mapillary_"):
            raise RelabelInputError(f"mapillary: segment entry {entry!r} does not start with mapillary_")
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
def _polygon_segment(base: Path, split: str, image: str, segment_id: int, cache: dict) -> np.ndarray | None:
    path = Path(image)
    stem = path.stem.removesuffix("_leftImg8bit")
    if "polygons" not in cache:
        cache["polygons"] = formats.read_polygon_json(base / "gtFine" / split / path.parent.name / f"{stem}_gtFine_polygons.json")
    data = cache["polygons"]
    obj = formats.polygon_object(data, segment_id)
    if obj is None or len(obj.get("polygon") or []) < 1:
        return None
    return formats.polygon_mask(obj["polygon"], int(data["imgHeight"]), int(data["imgWidth"]))


def _id_image_segment(cache: dict, key: str, read: Callable[[], np.ndarray], segment_id: int) -> np.ndarray:
    if key not in cache:
        cache[key] = read()
    return cache[key] == segment_id


def segment_mask(dataset: str, base: Path, split: str, image: str, segment_id: int,
                 base_label: Callable[[], np.ndarray], cache: dict) -> np.ndarray | None:
    """Boolean mask of one segment at the label's resolution, or None when the segment does not exist.

    ``cache`` holds what one image's segments share (its polygons, panoptic ids, instance map) and, set by
    the caller, ``instance_png`` (ADE20K) and ``instances_dir`` (Mapillary).
    """
    stem = Path(image).stem
    if dataset in ("bdd", "sunrgbd"):
        mask = base_label() == segment_id
    elif dataset in ("cityscapes", "idd"):
        mask = _polygon_segment(base, split, image, segment_id, cache)
    elif dataset == "coco":
        png = base / "annotations" / f"panoptic_{split}2017" / f"{stem}.png"
        mask = _id_image_segment(cache, "panoptic", lambda: formats.panoptic_segment_ids(formats.read_rgb(png)), segment_id)
    elif dataset == "mapillary":
        png = Path(cache["instances_dir"]) / f"{stem}.png"
        mask = _id_image_segment(cache, "instances", lambda: formats.read_label_ids(png), segment_id)
    elif dataset == "ade20k":
        def blue_channel() -> np.ndarray:
            height, width = base_label().shape
            blue = formats.read_rgb(cache["instance_png"])[..., 2]
            return cv2.resize(blue, (width, height), interpolation=cv2.INTER_NEAREST)
        mask = _id_image_segment(cache, "instances", blue_channel, segment_id)
    else:
        raise RelabelInputError(f"no segment locator for dataset {dataset!r}")
    return mask if mask is not None and mask.any() else None


# ----------------------------------------------------------------------------------------------------------
# One record on one label, in each mode
# ----------------------------------------------------------------------------------------------------------
# MSeg's records call the original class of Cityscapes' and IDD's rider segments "rider_other", a class their
# relabeled taxonomies never produce (the table sends the source class "rider" to bicyclist / motorcyclist by
# default). Checked mode tests such records against the source class named here.
ORIGINAL_CLASS_ALIASES = {("cityscapes", "rider_other"): "rider", ("idd", "rider_other"): "rider"}


@dataclass(frozen=True)
class Update:
    record: int  # index into the dataset's record list
    segment: int
    new: int  # id in the relabeled taxonomy
    original: int  # the original class's id in the relabeled taxonomy (mseg mode's test)
    original_sources: tuple[int, ...]  # source-label ids whose pixels count as the original class (checked mode)


@dataclass(frozen=True)
class Applied:
    status: str  # applied | mismatch | not_found
    segment_pixels: int = 0
    original_pixels: int = 0


def apply_checked(label: np.ndarray, source: np.ndarray, mask: np.ndarray, update: Update, pure: bool) -> Applied:
    """Only the segment's pixels of the original class change, and only when the segment has that class."""
    size = int(mask.sum())
    of_original = mask & np.isin(source, update.original_sources)
    count = int(of_original.sum())
    if not (count == size if pure else 2 * count > size):
        return Applied("mismatch", size, count)
    label[of_original] = update.new
    return Applied("applied", size, count)


def apply_mseg(label: np.ndarray, mask: np.ndarray, update: Update, pure: bool) -> Applied:
    """MSeg's swap_px_inside_mask: the whole mask, after a purity test on the label as relabeled so far."""
    size = int(mask.sum())
    count = int((label[mask] == update.original).sum())
    if pure and count != size:
        return Applied("mismatch", size, count)
    label[mask] = update.new
    return Applied("applied", size, count)


def _relabel_one(job: Job) -> tuple[str, str, list[tuple[int, Applied]], int]:
    """(status, message, (record, outcome) of the chosen mode, pixels where the two modes differ)."""
    base = Path(_CTX["base"])
    dataset = _CTX["dataset"]
    pure = dataset in PURE_SEGMENT_DATASETS
    updates, instance_png, base_label_path = job.extra
    try:
        source = formats.read_label_ids(base / job.source)
        checked, unknown = formats.apply_lut(source, _CTX["lut"])
        if unknown:
            return "failed", f"{job.source}: ids not in {_CTX['source']}: {sorted(unknown)[:10]}", [], 0
        mseg = checked.copy()
        cache: dict = {"instance_png": instance_png, "instances_dir": _CTX["instances_dirs"].get(job.split)}
        base_cache: list = []

        def base_label() -> np.ndarray:
            if not base_cache:
                base_cache.append(source if base_label_path == job.source else formats.read_label_ids(base / base_label_path))
            return base_cache[0]

        outcomes = []
        for update in updates:
            mask = segment_mask(dataset, base, job.split, job.image, update.segment, base_label, cache)
            if mask is None:
                outcomes.append((update.record, Applied("not_found")))
                continue
            if mask.shape != checked.shape:
                return "failed", f"{job.image}: segment mask {mask.shape} and label {checked.shape} differ in size", [], 0
            by_checked = apply_checked(checked, source, mask, update, pure)
            by_mseg = apply_mseg(mseg, mask, update, pure)
            outcomes.append((update.record, by_mseg if _CTX["mode"] == "mseg" else by_checked))
        formats.write_label(base / job.output, mseg if _CTX["mode"] == "mseg" else checked)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "failed", f"{job.image}: {exc}", [], 0
    return "written", "", outcomes, int(np.count_nonzero(checked != mseg))


# ----------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------
def _read_list(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise RelabelInputError(f"{path} does not exist; run `mseg-prepare remap` first")
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cells = line.split()
        if len(cells) != 2:
            raise RelabelInputError(f"{path}:{lineno}: expected 'image label', got {line!r}")
        pairs.append((cells[0], cells[1]))
    return pairs


def _relabeled_spec(key: str, mode: str) -> DatasetSpec:
    spec = get_spec(key)
    if key not in TARGETS:
        raise RelabelInputError(f"{key} is a {spec.role} dataset without relabeling; relabeled datasets: {', '.join(TARGETS)}")
    if mode not in RELABEL_MODES:
        raise RelabelInputError(f"relabel mode {mode!r}; valid: 'checked' (default) or 'mseg' (MSeg's output, pixel for pixel)")
    return spec


def ade20k_instances(spec: DatasetSpec, root: Path, mode: str, progress: bool) -> tuple[str, dict[str, Path]]:
    """The full release's instance maps (unpacking an archive placed since `extract`); the manual step if none."""
    from mseg_semantic.prepare.download import ManualStepRequired, manual_message
    from mseg_semantic.prepare.extract import extract_dataset

    extract_dataset(spec, root, progress=progress, only_needed_for=("relabel",))
    release, maps = ade20k_instance_maps(root)
    if not maps:
        raise ManualStepRequired("ade20k: relabeling needs the instance masks (*_seg.png) of a full ADE20K release, "
                                 f"none found under {root / 'ADE20K'}.\n"
                                 + manual_message(spec, spec.archive(ADE20K_FULL_2016), root))
    if mode == "mseg" and release != ADE20K_FULL_2016.removesuffix(".zip"):
        raise RelabelInputError(
            f"ade20k: --mode mseg reproduces MSeg's output from the 2016 full release ({ADE20K_FULL_2016}), whose instance "
            f"ids MSeg's records name; only {release} is here, whose revised annotations number instances their own "
            f"way. Place {ADE20K_FULL_2016} under {root / 'ADE20K'}, or relabel in the default checked mode")
    return release, maps


@dataclass
class RecordClasses:
    """Class ids of record class names in one relabeled taxonomy."""

    dataset: str
    table: RemapTable
    _sources: dict = field(default_factory=dict)

    def target_id(self, name: str) -> int:
        if name in self.table.target_names:
            return self.table.target_names.index(name)
        if name == "unlabeled":
            return IGNORE
        raise RelabelInputError(f"{self.dataset}: record class {name!r} is not in taxonomy {self.table.target}")

    def source_ids(self, name: str) -> tuple[int, ...]:
        """Source ids of a record's original class: those the table maps to it, else its alias's id."""
        if name not in self._sources:
            self._sources[name] = original_source_ids(self.dataset, self.table, name)
        return self._sources[name]


def original_source_ids(dataset: str, table: RemapTable, name: str) -> tuple[int, ...]:
    if name in table.target_names:
        target = table.target_names.index(name)
        ids = tuple(i for i, t in enumerate(table.mapping) if t == target)
        if ids:
            return ids
    alias = ORIGINAL_CLASS_ALIASES.get((dataset, name))
    if alias is not None and alias in table.source_names:
        return (table.source_names.index(alias),)
    raise RelabelInputError(f"{dataset}: no class of {table.source} becomes the record's original class {name!r} in "
                            f"{table.target}; the record cannot be checked")


def updates_by_image(dataset: str, records: list[SegmentRecord], located: list[tuple[str, int]], split: str,
                     classes: RecordClasses) -> dict[str, list[Update]]:
    """Image key -> the updates of its segments, in record order (MSeg's order of application)."""
    by_image: dict[str, list[Update]] = defaultdict(list)
    for index, (record, (image, segment)) in enumerate(zip(records, located)):
        if record.split == split:
            by_image[image].append(Update(index, segment, classes.target_id(record.new), classes.target_id(record.original),
                                          classes.source_ids(record.original)))
    return by_image


@dataclass
class TargetTally:
    """What relabeling one target taxonomy did, summed over its splits."""

    images: dict = field(default_factory=dict)
    outcomes: dict = field(default_factory=dict)  # record -> Applied
    image_not_in_list: list = field(default_factory=list)  # record indices
    failures: list = field(default_factory=list)
    pixels_differing: int = 0

    def add(self, results: list) -> None:
        for status, message, per_record, differing in results:
            if status == "failed":
                self.failures.append(message)
            self.outcomes.update(per_record)
            self.pixels_differing += differing

    def summary(self, records: list[SegmentRecord]) -> dict:
        statuses = [applied.status for applied in self.outcomes.values()]

        def describe(index: int) -> dict:
            record = records[index]
            applied = self.outcomes.get(index, Applied("image_not_in_list"))
            return {"entry": record.entry, "split": record.split, "original": record.original, "new": record.new,
                    "segment_list": record.segment_list, "status": applied.status,
                    "segment_pixels": applied.segment_pixels, "original_pixels": applied.original_pixels}

        problems = [i for i, a in sorted(self.outcomes.items()) if a.status != "applied"] + self.image_not_in_list
        return {"images": self.images, "applied": statuses.count("applied"), "not_found": statuses.count("not_found"),
                "mismatch": statuses.count("mismatch"), "image_not_in_list": len(self.image_not_in_list),
                "pixels_differing_between_modes": self.pixels_differing, "failed_files": len(self.failures),
                "failures": self.failures[:100], "problem_records": [describe(i) for i in problems[:500]]}


def _split_jobs(dataset: str, target: RelabelTarget, pairs: list[tuple[str, str]], by_image: dict[str, list[Update]],
                split: str, instance_maps: dict[str, Path], tally: TargetTally) -> list[Job]:
    listed = set()
    jobs = []
    for image, label in pairs:
        key = image_key(dataset, image)
        listed.add(key)
        updates = tuple(by_image.get(key, ()))
        instance_png = instance_maps.get(key)
        if updates and dataset == "ade20k" and instance_png is None:
            tally.outcomes.update((u.record, Applied("not_found")) for u in updates)
            updates = ()
        jobs.append(Job(split, image, target.source_label(label), target.output_label(label), (updates, instance_png, label)))
    tally.image_not_in_list += [u.record for key, items in by_image.items() if key not in listed for u in items]
    return jobs


def relabel_target(dataset: str, target: RelabelTarget, records: list[SegmentRecord], located: list[tuple[str, int]],
                   root: Path, instance_maps: dict[str, Path], mode: str, workers: int | None, progress: bool) -> dict:
    """Write one relabeled taxonomy of a dataset and its split lists; returns its part of the report."""
    table = load_table(target.source, target.target)
    classes = RecordClasses(dataset, table)
    base = dataset_dir(root, target.target)
    instances_dirs = {split: str(mapillary_annotation_dir(base, folder, "instances")) for split, folder in MAPILLARY_SPLITS}
    tally = TargetTally()
    for split in SPLITS:
        pairs = _read_list(list_file(root, target.base_list, split))
        by_image = updates_by_image(dataset, records, located, split, classes)
        jobs = _split_jobs(dataset, target, pairs, by_image, split, instance_maps, tally)
        context = {"base": str(base), "dataset": dataset, "lut": table.lut, "mode": mode, "source": target.source,
                   "instances_dirs": instances_dirs}
        failures_before = len(tally.failures)
        tally.add(run_jobs(jobs, context, workers or default_workers(), progress, f"relabel {target.target} {split}",
                           fn=_relabel_one))
        tally.images[split] = len(jobs)
        if len(tally.failures) == failures_before:
            write_list_file(list_file(root, target.target, split), [(j.image, j.output) for j in jobs])
    return tally.summary(records)


def _finish(report: dict, report_path: Path, strict: bool) -> None:
    failed = sum(part["failed_files"] for part in report["targets"].values())
    if failed:
        raise RelabelError(f"{report['dataset']}: {failed} label file(s) could not be relabeled; details in {report_path}")
    for name, part in report["targets"].items():
        reported = part["not_found"] + part["mismatch"] + part["image_not_in_list"]
        log.info("%s (%s mode): %d segments relabeled, %d records reported (not found %d, class mismatch %d, image not "
                 "listed %d); %d pixels differ from the other mode; %s", name, report["mode"], part["applied"], reported,
                 part["not_found"], part["mismatch"], part["image_not_in_list"], part["pixels_differing_between_modes"],
                 report_path)
        if strict and reported:
            raise RelabelError(f"{name}: {reported} relabeling record(s) could not be applied (--strict); details in {report_path}")


def relabel_dataset(key: str, root: Path, workers: int | None = None, records_dir=None, strict: bool = False,
                    progress: bool = True, mode: str = "checked") -> dict:
    """Write every relabeled taxonomy of a training dataset plus its split lists; returns the report
    (``<root>/.mseg_prepare/reports/relabel_<key>.json``), which counts per target the pixels where
    ``checked`` and ``mseg`` mode differ."""
    spec = _relabeled_spec(key, mode)
    root = Path(root)
    records = load_records(key, records_dir)
    located = [parse_entry(key, record.entry) for record in records]
    report: dict = {"dataset": key, "mode": mode, "records": len(records), "targets": {}}
    instance_maps: dict[str, Path] = {}
    if key == "ade20k":
        report["instance_release"], instance_maps = ade20k_instances(spec, root, mode, progress)
    started = time.time()
    for target in TARGETS[key]:
        report["targets"][target.target] = relabel_target(key, target, records, located, root, instance_maps, mode,
                                                          workers, progress)
    report["seconds"] = round(time.time() - started, 1)
    _finish(report, write_report(root, f"relabel_{key}", report), strict)
    return report
