"""Evaluate a model on one dataset split: inference, confusion matrix, per-class table, JSON summary.

Outputs under ``save_folder``: ``per_class.md``, ``summary.json`` and, with ``save_predictions``,
``predictions/gray/<image relpath>.png`` (ids in the evaluation taxonomy) and ``predictions/color/...``.
Every file is written atomically. Under torchrun each rank takes every ``world_size``-th image and the
confusion matrices are summed before the metrics are computed (rank 0 writes).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mseg_semantic.atomic import atomic_write_json, atomic_write_text
from mseg_semantic.data.datasets import ValDataset, configure_worker_threads
from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.inference import InferenceSettings, segment_images
from mseg_semantic.evaluation.metrics import ConfusionMatrix, SegmentationMetrics, class_status
from mseg_semantic.evaluation.model_space import LoadedModel, OutputSpace, evaluation_space, label_dtype
from mseg_semantic.evaluation.visualize import colorize, write_png

__all__ = ["EvalData", "EvaluationResult", "evaluate_dataset", "format_per_class_table", "select_indices"]


@dataclass(frozen=True)
class EvalData:
    """Where an evaluation's images come from, and which of them (the config's DATA/TEST keys)."""

    split: str
    data_root: str | None
    dataset_roots: Mapping[str, str]
    dataset_lists: Mapping[str, Mapping[str, str]]
    index_start: int = 0  # MSeg's slice of the list: index_step images from index_start (0: to the end)
    index_step: int = 0
    images_per_batch: int = 1
    workers: int = 0

    @classmethod
    def from_config(cls, cfg: Any) -> "EvalData":
        return cls(cfg.TEST.split, cfg.DATA.data_root or None, cfg.DATA.dataset_roots, cfg.DATA.dataset_lists,
                   cfg.TEST.index_start, cfg.TEST.index_step, cfg.TEST.batch_size_val, cfg.TRAIN.workers)


@dataclass
class EvaluationResult:
    dataset: str
    split: str
    num_images: int
    metrics: SegmentationMetrics
    space: OutputSpace
    seconds: float
    save_folder: Path | None

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
    save_predictions: bool = False,
    progress: bool = True,
    model_label: str | None = None,
) -> EvaluationResult:
    """Run ``loaded.model`` over ``dataset``'s ``data.split`` and score it in :func:`evaluation_space`."""
    if save_predictions and save_folder is None:
        raise UserError("save_predictions=True needs a save_folder to write the predictions to")
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    space = evaluation_space(loaded, dataset)
    images = ValDataset(dataset, data.split, data.data_root, data.dataset_roots, data.dataset_lists)
    indices = select_indices(len(images), data.index_start, data.index_step, rank, world_size)
    device = next(loaded.model.parameters()).device
    matrix = ConfusionMatrix(space.num_classes, device=device)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(images, indices),
        batch_size=max(1, data.images_per_batch),
        shuffle=False,
        num_workers=data.workers,
        collate_fn=_collate,
        worker_init_fn=configure_worker_threads if data.workers > 0 else None,
    )
    save_folder = Path(save_folder) if save_folder is not None else None
    out_dtype = label_dtype(space.num_classes)
    started = time.perf_counter()
    bar = tqdm(total=len(indices), desc=f"{dataset} {data.split}", unit="img", disable=not progress or rank != 0, dynamic_ncols=True)
    for batch in loader:
        labels = [space.convert_label(item["label"]) for item in batch]
        preds = segment_images(loaded.model, [item["image"] for item in batch], settings, space.projection)
        for item, pred, label in zip(batch, preds, labels):
            matrix.update(pred, torch.from_numpy(label.astype(np.int64)))
            if save_predictions:
                pred_np = pred.to("cpu").numpy().astype(out_dtype)
                rel = _prediction_relpath(item["image_path"], images.location.root)
                write_png(save_folder / "predictions" / "gray" / rel, pred_np)
                write_png(save_folder / "predictions" / "color" / rel, colorize(pred_np, space.colors), rgb=True)
        bar.update(len(batch))
        if not bar.disable:
            bar.set_postfix(pixel_acc=f"{_running_accuracy(matrix):.3f}")
    bar.close()
    matrix.all_reduce()
    seconds = time.perf_counter() - started
    metrics = matrix.compute(space.valid_classes)
    total_images = len(select_indices(len(images), data.index_start, data.index_step))
    result = EvaluationResult(dataset, data.split, total_images, metrics, space, seconds, save_folder)
    if rank == 0 and save_folder is not None:
        write_reports(result, loaded, settings, model_label or Path(loaded.path).stem, str(device))
    return result


def _running_accuracy(matrix: ConfusionMatrix) -> float:
    counts = matrix.counts
    total = counts.sum()
    return float(counts.diagonal().sum() / total) if total > 0 else float("nan")


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_per_class_table(result: EvaluationResult, model_label: str) -> str:
    m = result.metrics
    status = class_status(m)
    excluded = sum(1 for s in status if s == "excluded")
    absent = [result.space.class_names[c] for c, s in enumerate(status) if s == "absent"]
    lines = [
        f"# {result.dataset} ({result.split}, {result.num_images} images), model {model_label}, taxonomy {result.space.name}",
        "",
        f"mIoU {_pct(m.miou)} | pixel acc {_pct(m.pixel_acc)} | mean acc {_pct(m.mean_acc)} | fw IoU {_pct(m.fw_iou)} "
        f"| mIoU, MSeg's formula {_pct(m.miou_mseg)}",
        "",
    ]
    if excluded:
        lines += [f"{excluded} classes of {result.space.name} are excluded: {result.dataset} cannot express them (MSeg's rule).", ""]
    if absent:
        lines += [f"Absent from prediction and ground truth (no IoU, not in the mean): {', '.join(absent)}.", ""]
    lines += ["| id | class | IoU | acc | GT pixels | predicted pixels | status |", "| ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for c, name in enumerate(result.space.class_names):
        if status[c] == "excluded":
            continue
        lines.append(
            f"| {c} | {name} | {_pct(m.iou[c])} | {_pct(m.acc[c])} | {int(m.gt_pixels[c])} | {int(m.pred_pixels[c])} | {status[c]} |"
        )
    return "\n".join(lines) + "\n"


def write_reports(result: EvaluationResult, loaded: LoadedModel, settings: InferenceSettings, model_label: str, device: str) -> None:
    folder = result.save_folder
    summary = {
        "dataset": result.dataset,
        "split": result.split,
        "num_images": result.num_images,
        "model_path": loaded.path,
        "model_label": model_label,
        "model": loaded.name,
        "model_taxonomy": loaded.model_taxonomy,
        "eval_taxonomy": result.space.name,
        "inference": asdict(settings),
        "device": device,
        "seconds": round(result.seconds, 3),
        "seconds_per_image": round(result.seconds / max(result.num_images, 1), 4),
        **result.metrics.to_dict(result.space.class_names),
    }
    atomic_write_json(folder / "summary.json", summary)
    atomic_write_text(folder / "per_class.md", format_per_class_table(result, model_label))

