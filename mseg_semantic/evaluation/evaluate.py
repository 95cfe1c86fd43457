"""Evaluate a model on one dataset split: inference, confusion matrix, per-class table, JSON summary, pictures.

Outputs under ``save_folder``: ``per_class.md``, ``summary.json``, and as :class:`OutputOptions` asks:
``per_class_iou.png`` (bars) and ``confusion.png`` (row-normalised confusion matrix) beside them;
``predictions/gray/<image relpath>.png`` (ids in the evaluation taxonomy), ``predictions/color/...``;
``predictions/confidence/<image relpath>_{maxprob,entropy}.png``; ``predictions/probabilities/<image relpath>_probs.npz``
(formats: :mod:`mseg_semantic.evaluation.outputs`). Every file is written atomically. Under torchrun each rank
takes every ``world_size``-th image and the confusion matrices are summed before the metrics are computed
(rank 0 writes the reports; each rank writes its own images' predictions).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from mseg_semantic.atomic import atomic_write_json, atomic_write_text
from mseg_semantic.data.datasets import ValDataset, configure_worker_threads
from mseg_semantic.data.lists import BadSampleError
from mseg_semantic.distributed import DistInfo
from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.figures import confusion_image, iou_bar_chart
from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings, predict_image_probabilities
from mseg_semantic.evaluation.metrics import ConfusionMatrix, SegmentationMetrics, class_status
from mseg_semantic.evaluation.model_space import LoadedModel, OutputSpace, evaluation_space
from mseg_semantic.evaluation.outputs import pixel_outputs, write_confidence, write_probabilities
from mseg_semantic.evaluation.progress import Progress
from mseg_semantic.evaluation.visualize import colorize, write_png
from mseg_semantic.taxonomy import IGNORE_INDEX, Catalog, UnknownLabelError

log = logging.getLogger("mseg_semantic.evaluation")

__all__ = ["EvalData", "EvaluationResult", "OutputOptions", "evaluate_dataset", "format_per_class_table", "select_indices"]


@dataclass(frozen=True)
class EvalData:
    """Where an evaluation's images come from (the run's Catalog), and which of them (the config's TEST keys)."""

    split: str
    catalog: Catalog
    index_start: int = 0  # MSeg's slice of the list: index_step images from index_start (0: to the end)
    index_step: int = 0
    images_per_batch: int = 1
    workers: int = 0
    on_bad_sample: str = "error"  # error | skip: an unreadable image or a label with unknown ids (validation skips)

    @classmethod
    def from_config(cls, cfg: Any, catalog: Catalog | None = None) -> "EvalData":
        # TRAIN.workers is sized for a training node; decoding for inference needs no more processes than cores
        workers = min(cfg.TRAIN.workers, len(os.sched_getaffinity(0)))
        return cls(cfg.TEST.split, catalog or Catalog.from_config(cfg), cfg.TEST.index_start, cfg.TEST.index_step, cfg.TEST.batch_size_val, workers)

    def partial_note(self, list_size: int) -> str | None:
        """None when the whole list is evaluated, else which part of it (for every table made from the result)."""
        end = list_size if self.index_step == 0 else min(self.index_start + self.index_step, list_size)
        if self.index_start == 0 and end == list_size:
            return None
        return (f"images {self.index_start}..{end - 1} of the {list_size} in the {self.split} list "
                f"(TEST.index_start={self.index_start}, index_step={self.index_step})")


@dataclass(frozen=True)
class OutputOptions:
    """What an evaluation writes beside summary.json and per_class.md, and in which taxonomy (TEST keys)."""

    predictions: bool  # TEST.save_predictions: label and colour PNGs
    confidence: bool  # TEST.save_confidence: max probability and entropy, 16-bit PNGs
    probabilities: bool  # TEST.save_probabilities: every class's probability, compressed .npz
    figures: bool  # TEST.save_figures: per_class_iou.png and confusion.png
    output_taxonomy: str | None  # TEST.output_taxonomy: None = MSeg's evaluation taxonomy, or the dataset's own
    uncovered: str  # TEST.uncovered_classes: drop | ignore

    @classmethod
    def from_config(cls, test: Mapping[str, Any]) -> "OutputOptions":
        return cls(test["save_predictions"], test["save_confidence"], test["save_probabilities"], test["save_figures"],
                   test["output_taxonomy"], test["uncovered_classes"])

    @classmethod
    def tables_only(cls) -> "OutputOptions":
        """summary.json and per_class.md only, in MSeg's evaluation taxonomy (validation, tests)."""
        return cls(False, False, False, False, None, "drop")

    @property
    def per_image(self) -> bool:
        return self.predictions or self.confidence or self.probabilities


@dataclass
class EvaluationResult:
    dataset: str
    split: str
    num_images: int
    metrics: SegmentationMetrics
    space: OutputSpace
    seconds: float
    save_folder: Path | None
    list_size: int  # images in the split list
    partial: str | None  # which part of the list was evaluated, when not all of it
    confusion: np.ndarray  # K x (K + 1) pixel counts: ground truth x prediction, the last column 'unlabeled'
    skipped: list[str] = field(default_factory=list)  # bad samples left out (EvalData.on_bad_sample=skip), one message each

    @property
    def miou(self) -> float:
        return self.metrics.miou


def select_indices(total: int, index_start: int = 0, index_step: int = 0, rank: int = 0, world_size: int = 1) -> list[int]:
    """MSeg's subset (``index_step`` images from ``index_start``; 0 = to the end), then this rank's share."""
    if index_start < 0 or index_start >= total:
        raise UserError(f"TEST.index_start={index_start} is outside the list of {total} images")
    end = total if index_step == 0 else min(index_start + index_step, total)
    return list(range(index_start, end))[rank::world_size]


def _collate(items: list[dict]) -> list[dict]:
    return items


def _prediction_relpath(image_path: str, root: Path) -> Path:
    path = Path(image_path)
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix(".png")


def evaluate_dataset(
    loaded: LoadedModel,
    dataset: str,
    settings: InferenceSettings,
    data: EvalData,
    save_folder: str | Path | None = None,
    outputs: OutputOptions | None = None,
    progress: bool = True,
    model_label: str | None = None,
    engine: InferenceModel | None = None,
    info: DistInfo = DistInfo(),
) -> EvaluationResult:
    """Run ``loaded.model`` over ``dataset``'s ``data.split`` and score it in :func:`evaluation_space`.

    ``outputs``: what is written besides the tables (default: the tables only); ``engine``: ``loaded.model``
    already prepared for inference (:class:`InferenceModel`), e.g. shared by the runs of a benchmark; ``info``:
    the processes sharing the images (each takes every ``world_size``-th; the confusion matrices are summed).
    """
    outputs = outputs or OutputOptions.tables_only()
    if (outputs.per_image or outputs.figures) and save_folder is None:
        raise UserError("saving predictions, confidence, probabilities or figures needs a save_folder to write them to")
    rank, world_size = info.rank, info.world_size
    space = evaluation_space(loaded, dataset, outputs.output_taxonomy, outputs.uncovered)
    images = ValDataset(data.catalog, dataset, data.split)
    indices = select_indices(len(images), data.index_start, data.index_step, rank, world_size)
    engine = engine or InferenceModel(loaded.model, settings)
    device = engine.device
    matrix = ConfusionMatrix(space.num_classes, device=device)
    skipped: list[str] = []
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(_Reported(images) if data.on_bad_sample == "skip" else images, indices),
        batch_size=max(1, data.images_per_batch),
        shuffle=False,
        num_workers=data.workers,
        collate_fn=_collate,
        worker_init_fn=configure_worker_threads if data.workers > 0 else None,
    )
    save_folder = Path(save_folder) if save_folder is not None else None
    started = time.perf_counter()
    # rank 0 reports its share (every rank takes as many images, within one)
    bar = Progress(len(indices), f"{dataset} {data.split}", enabled=progress and rank == 0)
    for loaded_batch in loader:
        batch, labels = _scorable(loaded_batch, space, dataset, skipped if data.on_bad_sample == "skip" else None)
        probabilities = predict_image_probabilities(engine, [item["image"] for item in batch], settings, space.projection) if batch else []
        for item, probs, label in zip(batch, probabilities, labels):
            pixels = pixel_outputs(probs, space, confidence=outputs.confidence, probabilities=outputs.probabilities)
            matrix.update(pixels.label, torch.from_numpy(label.astype(np.int64)))
            if outputs.per_image:
                _write_image_outputs(save_folder, _prediction_relpath(item["image_path"], images.location.root), pixels, space, outputs)
        bar.update(len(loaded_batch), pixel_acc=f"{_running_accuracy(matrix):.3f}")
    bar.close()
    matrix.all_reduce(info)
    seconds = time.perf_counter() - started
    metrics = matrix.compute(space.valid_classes)
    total_images = len(select_indices(len(images), data.index_start, data.index_step))
    result = EvaluationResult(dataset, data.split, total_images, metrics, space, seconds, save_folder, len(images),
                              data.partial_note(len(images)), matrix.table.cpu().numpy(), skipped)
    if rank == 0 and save_folder is not None:
        write_reports(result, loaded, engine.settings, model_label or Path(loaded.path).stem, str(device), outputs.figures)
    return result


class _Reported(torch.utils.data.Dataset):
    """An image dataset whose unreadable samples come back as ``{"bad": message}`` instead of raising."""

    def __init__(self, images: ValDataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.images[index]
        except BadSampleError as exc:
            return {"bad": str(exc)}


def _scorable(batch: list[dict], space: OutputSpace, dataset: str, skipped: list[str] | None) -> tuple[list[dict], list[np.ndarray]]:
    """The items of ``batch`` that can be scored and their ground truth. With ``skipped`` (a list) a bad item is logged,
    naming the file, added to it and left out; without, it raises."""
    items, labels = [], []
    for item in batch:
        try:
            if "bad" in item:
                raise BadSampleError(item["bad"])
            labels.append(ground_truth(item, space, dataset))
            items.append(item)
        except BadSampleError as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
            log.warning("%s: bad sample left out of the evaluation: %s", dataset, exc)
    return items, labels


def ground_truth(item: Mapping[str, Any], space: OutputSpace, dataset: str) -> np.ndarray:
    """An item's label in the scoring space. Ids its taxonomy does not have stop the evaluation naming the file
    (checked before the image is run through the model; never scored as some class)."""
    label = item["label"]
    try:
        converted = space.convert_label(label)
    except UnknownLabelError as exc:
        raise BadSampleError(item["label_path"], str(exc)) from None
    if space.converter is None and converted.size and int(converted.max()) >= space.num_classes:
        ids = np.unique(converted)
        bad = [int(i) for i in ids if space.num_classes <= i != IGNORE_INDEX]
        if bad:
            shown = ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else "")
            raise BadSampleError(item["label_path"], f"ground-truth id(s) {shown} are not in the {space.name} taxonomy of "
                                 f"{dataset} (valid: 0..{space.num_classes - 1} and {IGNORE_INDEX}); is the label in "
                                 f"another taxonomy (e.g. the raw one before mseg-prepare remap)?")
    return converted


def _write_image_outputs(folder: Path, rel: Path, pixels, space: OutputSpace, outputs: OutputOptions) -> None:
    predictions = folder / "predictions"
    if outputs.predictions:
        label = pixels.label_array()
        write_png(predictions / "gray" / rel, label)
        write_png(predictions / "color" / rel, colorize(label, space.colors), rgb=True)
    stem = rel.with_suffix("")
    if outputs.confidence:
        write_confidence(predictions / "confidence" / stem, pixels)
    if outputs.probabilities:
        write_probabilities(predictions / "probabilities" / stem, pixels, space.class_names)


def _running_accuracy(matrix: ConfusionMatrix) -> float:
    total = matrix.table.sum()
    return float(matrix.counts.diagonal().sum() / total) if total > 0 else float("nan")


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_per_class_table(result: EvaluationResult, model_label: str) -> str:
    m = result.metrics
    status = class_status(m)
    excluded = sum(1 for s in status if s == "excluded")
    absent = [result.space.class_names[c] for c, s in enumerate(status) if s == "absent"]
    lines = [f"# {result.dataset} ({result.split}, {result.num_images} images), model {model_label}, taxonomy {result.space.name}", ""]
    if result.partial:
        lines += [f"**PARTIAL**: {result.partial}; not comparable with results on the whole list.", ""]
    lines += [
        f"MSeg's formulas (a class absent from the ground truth counts 0; MSeg's mIoU / mAcc / allAcc): "
        f"mIoU {_pct(m.miou_mseg)} | mAcc {_pct(m.mean_acc_mseg)} | allAcc {_pct(m.pixel_acc)}",
        "",
        f"Absent classes left out (Cityscapes rule): mIoU {_pct(m.miou)} | mean acc {_pct(m.mean_acc)} | fw IoU {_pct(m.fw_iou)}",
        "",
    ]
    if excluded:
        lines += [f"{excluded} classes of {result.space.name} are excluded: {result.dataset} cannot express them (MSeg's rule).", ""]
    if absent:
        lines += [f"Absent from prediction and ground truth (no IoU; 0 in MSeg's mean): {', '.join(absent)}.", ""]
    unlabeled = int(m.unlabeled_pixels.sum())
    if unlabeled:
        lines += [f"{unlabeled} pixels were predicted 'unlabeled' (uncovered_classes=ignore): misses of their classes.", ""]
    for note in result.space.notes:
        lines += [f"Projection: {note}.", ""]
    lines += ["| id | class | IoU | acc | GT pixels | predicted pixels | status |", "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for c, name in enumerate(result.space.class_names):
        if status[c] == "excluded":
            continue
        lines.append(
            f"| {c} | {name} | {_pct(m.iou[c])} | {_pct(m.acc[c])} | {int(m.gt_pixels[c])} | {int(m.pred_pixels[c])} | {status[c]} |"
        )
    return "\n".join(lines) + "\n"


def write_reports(result: EvaluationResult, loaded: LoadedModel, settings: InferenceSettings, model_label: str, device: str,
                  figures: bool = False) -> None:
    folder = result.save_folder
    summary = {
        "dataset": result.dataset,
        "split": result.split,
        "num_images": result.num_images,
        "images_in_list": result.list_size,
        "partial": result.partial,
        "model_path": loaded.path,
        "model_label": model_label,
        "model": loaded.name,
        "model_taxonomy": loaded.model_taxonomy,
        "eval_taxonomy": result.space.name,
        "uncovered_classes": result.space.uncovered if result.space.projection is not None else None,
        "projection_notes": list(result.space.notes),
        "inference": asdict(settings),
        "device": device,
        "seconds": round(result.seconds, 3),
        "seconds_per_image": round(result.seconds / max(result.num_images, 1), 4),
        **result.metrics.to_dict(result.space.class_names),
    }
    atomic_write_json(folder / "summary.json", summary)
    atomic_write_text(folder / "per_class.md", format_per_class_table(result, model_label))
    if figures:
        m = result.metrics
        title = (f"{result.dataset} ({result.split}{', PARTIAL' if result.partial else ''}), {model_label}: "
                 f"mIoU {_pct(m.miou_mseg)} (MSeg's formula), {_pct(m.miou)} (absent classes left out)")
        write_png(folder / "per_class_iou.png", iou_bar_chart(title, result.space.class_names, m.iou, result.space.colors, m.valid), rgb=True)
        write_png(folder / "confusion.png", confusion_image(f"{result.dataset}, {model_label}: row-normalised confusion matrix",
                                                           result.space.class_names, result.confusion, m.valid), rgb=True)
