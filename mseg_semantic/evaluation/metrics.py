"""Confusion matrix and the segmentation metrics derived from it.

Conventions (see docs/evaluation.md for how they relate to MSeg and Cityscapes):

- ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` over pixels whose ground truth is not ``ignore_index``.
- A class absent from both prediction and ground truth has no IoU (NaN, reported as "absent") and does not
  enter the mean: this is the Cityscapes scripts' rule. MSeg's own formula, ``I / (U + 1e-10)`` averaged over
  every class, counts such a class as 0; it is computed too (``miou_mseg``) so published numbers can be
  compared exactly.
- MSeg's mean accuracy likewise averages ``I / (T + 1e-10)`` over every class (0 for a class without ground
  truth, ``mean_acc_mseg``); ``mean_acc`` leaves such a class out.
- On a training dataset's val split evaluated in the universal taxonomy, only the universal classes that the
  dataset can express enter the means (``valid_classes``); the others are reported as "excluded", as MSeg does.
- A pixel predicted ``ignore_index`` ("unlabeled": ``TEST.uncovered_classes=ignore`` where the model prefers a
  class the output taxonomy does not have) is a miss of its ground-truth class and a prediction of no class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mseg_semantic.distributed import DistInfo, all_reduce_sum

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "harmonic_mean", "class_status"]


@dataclass
class SegmentationMetrics:
    miou: float  # mean IoU over valid classes that are present in prediction or ground truth
    miou_mseg: float  # MSeg's formula: mean over all valid classes, an absent class counting as 0
    pixel_acc: float  # correct / labelled pixels
    mean_acc: float  # mean over valid classes with ground truth of TP / (TP + FN)
    mean_acc_mseg: float  # MSeg's mAcc: mean over all valid classes, a class without ground truth counting as 0
    fw_iou: float  # IoU weighted by each class's share of the labelled pixels
    iou: np.ndarray  # (K,) float64, NaN where the class is absent from prediction and ground truth
    acc: np.ndarray  # (K,) float64, NaN where the class has no ground-truth pixel
    gt_pixels: np.ndarray  # (K,) int64
    pred_pixels: np.ndarray  # (K,) int64, over labelled pixels only
    valid: np.ndarray  # (K,) bool: False for excluded classes
    num_pixels: int  # labelled pixels seen
    unlabeled_pixels: np.ndarray  # (K,) int64: pixels of each ground-truth class predicted "unlabeled" (a miss)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-ready: NaN becomes null, each class carries its status (ok / absent / excluded)."""
        status = class_status(self)
        per_class = []
        for c in range(len(self.iou)):
            per_class.append(
                {
                    "id": c,
                    "name": class_names[c] if class_names is not None else str(c),
                    "status": status[c],
                    "iou": _finite_or_none(self.iou[c]),
                    "acc": _finite_or_none(self.acc[c]),
                    "gt_pixels": int(self.gt_pixels[c]),
                    "pred_pixels": int(self.pred_pixels[c]),
                }
            )
        return {
            "miou": _finite_or_none(self.miou),
            "miou_mseg": _finite_or_none(self.miou_mseg),
            "pixel_acc": _finite_or_none(self.pixel_acc),
            "mean_acc": _finite_or_none(self.mean_acc),
            "mean_acc_mseg": _finite_or_none(self.mean_acc_mseg),
            "fw_iou": _finite_or_none(self.fw_iou),
            "num_pixels": int(self.num_pixels),
            "unlabeled_predictions": int(self.unlabeled_pixels.sum()),
            "num_valid_classes": int(self.valid.sum()),
            "num_present_classes": int(sum(1 for s in status if s == "ok")),
            "per_class": per_class,
        }


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def class_status(metrics: SegmentationMetrics) -> list[str]:
    """Per class: 'excluded' (not a class of this evaluation), 'absent' (no pixel predicted nor labelled), or 'ok'."""
    out = []
    for c in range(len(metrics.iou)):
        if not metrics.valid[c]:
            out.append("excluded")
        elif math.isnan(metrics.iou[c]):
            out.append("absent")
        else:
            out.append("ok")
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


class ConfusionMatrix:
    """``counts[t, p]`` = pixels with ground truth ``t`` predicted as ``p``, accumulated on ``device`` with bincount.

    ``update`` takes integer tensors (or numpy arrays) of equal shape. Ground-truth pixels equal to
    ``ignore_index`` are skipped; a prediction equal to ``ignore_index`` ("unlabeled") is counted in an extra
    column (:attr:`unlabeled`): a miss of the ground-truth class. Any other ground-truth or predicted id outside
    ``[0, num_classes)`` is an error, never silently dropped.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = 255):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.device = torch.device(device)
        # one table, so that one all_reduce sums everything: columns 0..K-1 the classes, column K 'unlabeled'
        self.table = torch.zeros((self.num_classes, self.num_classes + 1), dtype=torch.int64, device=self.device)

    @property
    def counts(self) -> torch.Tensor:
        """K x K: ground truth (rows) x predicted class (columns)."""
        return self.table[:, : self.num_classes]

    @property
    def unlabeled(self) -> torch.Tensor:
        """(K,) pixels of each ground-truth class predicted 'unlabeled' (ignore_index)."""
        return self.table[:, self.num_classes]

    def reset(self) -> None:
        self.table.zero_()

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        pred = _as_long_tensor(pred, self.device)
        target = _as_long_tensor(target, self.device)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(target.shape)}")
        labelled = target != self.ignore_index
        target = target[labelled]
        pred = pred[labelled]
        k = self.num_classes
        for name, ids, allowed in (("ground-truth", target, None), ("predicted", pred, self.ignore_index)):
            outside = (ids < 0) | (ids >= k)
            if allowed is not None:
                outside &= ids != allowed
            if outside.any():
                bad = torch.unique(ids[outside])[:10].tolist()
                raise ValueError(f"{name} ids {bad} are outside 0..{k - 1} (and not the ignore id {self.ignore_index})")
        column = torch.where(pred == self.ignore_index, torch.full_like(pred, k), pred)
        self.table += torch.bincount(target * (k + 1) + column, minlength=k * (k + 1)).reshape(k, k + 1)

    def all_reduce(self, info: DistInfo) -> None:
        """Sum the counts over the ranks of ``info`` (a no-op for one process)."""
        all_reduce_sum(self.table, info)

    def compute(self, valid_classes: Sequence[int] | None = None) -> SegmentationMetrics:
        """Metrics from the counts; ``valid_classes`` limits the means to those ids (others: 'excluded')."""
        table = self.table.double().cpu().numpy()
        counts = table[:, : self.num_classes]
        k = self.num_classes
        valid = np.ones(k, dtype=bool)
        if valid_classes is not None:
            ids = np.asarray(list(valid_classes), dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= k):
                raise ValueError(f"valid_classes contains ids outside 0..{k - 1}: {sorted(set(ids[(ids < 0) | (ids >= k)].tolist()))}")
            valid[:] = False
            valid[ids] = True
        tp = np.diag(counts)
        gt = table.sum(axis=1)  # 'unlabeled' predictions included: they are misses
        predicted = counts.sum(axis=0)
        union = gt + predicted - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        total = gt.sum()
        weights = gt / total if total > 0 else np.zeros(k)
        # MSeg's formulas (utils/avg_meter.py): I / (U + 1e-10) and I / (T + 1e-10), plain means over the classes
        mseg_iou = tp / (union + 1e-10)
        mseg_acc = tp / (gt + 1e-10)
        return SegmentationMetrics(
            miou=_nanmean(iou[valid]),
            miou_mseg=float(mseg_iou[valid].mean()) if valid.any() else float("nan"),
            pixel_acc=float(tp.sum() / total) if total > 0 else float("nan"),
            mean_acc=_nanmean(acc[valid]),
            mean_acc_mseg=float(mseg_acc[valid].mean()) if valid.any() else float("nan"),
            fw_iou=float(np.nansum(weights[valid] * iou[valid])) if total > 0 else float("nan"),
            iou=iou,
            acc=acc,
            gt_pixels=gt.astype(np.int64),
            pred_pixels=predicted.astype(np.int64),
            valid=valid,
            num_pixels=int(total),
            unlabeled_pixels=table[:, k].astype(np.int64),
        )


def _as_long_tensor(x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"label maps must be integer tensors, got {x.dtype}")
    return x.to(device=device, dtype=torch.int64, non_blocking=True).reshape(-1)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean as in MSeg's tables; 0 if any value is 0; NaN for an empty list or a NaN value."""
    values = [float(v) for v in values]
    if not values or any(math.isnan(v) for v in values):
        return float("nan")
    if any(v < 0 for v in values):
        raise ValueError(f"harmonic mean of negative values: {values}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)
