"""MSeg's zero-shot benchmark: the six held-out test datasets, the best of three base sizes each, harmonic mean.

As in MSeg's evaluation scripts: each test dataset's ``val`` list, single scale by default, base sizes
360 / 720 / 1080 with the maximum mIoU per dataset reported (MSeg's README: "We run inference with the shorter
side of each test image at three resolutions (360p, 720p, 1080p), and take the max"). The table has MSeg's
README columns: VOC, PASCAL Context, CamVid, WildDash, KITTI, ScanNet, harmonic mean.

A dataset whose split list is not on disk is reported as missing with the path that was looked for, and the
harmonic mean is then marked incomplete instead of being computed over the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from mseg_semantic.data.catalog import locate
from mseg_semantic.evaluation.metrics import harmonic_mean
from mseg_semantic.taxonomy import ZERO_SHOT_DATASETS

__all__ = [
    "ZERO_SHOT_DATASETS",
    "COLUMN_LABELS",
    "ZeroShotEntry",
    "find_missing",
    "run_zero_shot",
    "format_zero_shot_table",
    "zero_shot_summary",
]

COLUMN_LABELS = {
    "voc2012": "VOC",
    "pascal-context-60": "PC",
    "camvid-11": "CamVid",
    "wilddash-19": "WD",
    "kitti-19": "KITTI",
    "scannet-20": "SN",
}


@dataclass
class ZeroShotEntry:
    dataset: str
    by_base_size: dict[int, float] = field(default_factory=dict)  # base size -> mIoU (fraction)
    missing: str | None = None  # why it was not evaluated

    @property
    def best_base_size(self) -> int | None:
        finite = {b: v for b, v in self.by_base_size.items() if not math.isnan(v)}
        return max(finite, key=finite.get) if finite else None

    @property
    def miou(self) -> float | None:
        best = self.best_base_size
        return None if best is None else self.by_base_size[best]


def find_missing(
    dataset: str,
    split: str,
    data_root: str | None,
    dataset_roots: Mapping[str, str] | None = None,
    dataset_lists: Mapping[str, Mapping[str, str]] | None = None,
) -> str | None:
    """None when the split list exists, else 'not found at PATH' (or why it cannot be located)."""
    try:
        location = locate(dataset, split, data_root, dataset_roots, dataset_lists)
    except ValueError as exc:
        return str(exc)
    if not Path(location.list_file).is_file():
        return f"not found at {location.list_file}"
    return None


def run_zero_shot(
    evaluate: Callable[[str, int], float],
    datasets: Sequence[str],
    base_sizes: Sequence[int],
    missing: Callable[[str], str | None],
) -> list[ZeroShotEntry]:
    """``evaluate(dataset, base_size) -> mIoU`` for every available dataset and base size."""
    if not base_sizes:
        raise ValueError("TEST.benchmark_base_sizes is empty; MSeg uses [360, 720, 1080]")
    entries = []
    for dataset in ordered(datasets):
        reason = missing(dataset)
        entry = ZeroShotEntry(dataset, missing=reason)
        if reason is None:
            for base_size in base_sizes:
                entry.by_base_size[int(base_size)] = float(evaluate(dataset, int(base_size)))
        entries.append(entry)
    return entries


def ordered(datasets: Sequence[str]) -> list[str]:
    """MSeg's column order first, other datasets after in the given order; duplicates dropped."""
    known = [d for d in ZERO_SHOT_DATASETS if d in datasets]
    return known + [d for d in dict.fromkeys(datasets) if d not in ZERO_SHOT_DATASETS]


def _hmean(entries: Sequence[ZeroShotEntry]) -> tuple[float | None, bool]:
    complete = all(e.miou is not None for e in entries) and bool(entries)
    if not complete:
        return None, False
    return harmonic_mean([100 * e.miou for e in entries]), True


def format_zero_shot_table(model_label: str, entries: Sequence[ZeroShotEntry]) -> str:
    """Markdown in the layout of MSeg's README table (mIoU in percent, one decimal)."""
    heads = [COLUMN_LABELS.get(e.dataset, e.dataset) + " mIoU" for e in entries]
    hmean, complete = _hmean(entries)
    cells = [f"{100 * e.miou:.1f}" if e.miou is not None else "missing" for e in entries]
    hcell = f"{hmean:.1f}" if complete else "incomplete"
    lines = [
        "| Model | " + " | ".join(heads) + " | h. mean |",
        "| :---: | " + " | ".join(":---:" for _ in entries) + " | :---: |",
        f"| {model_label} | " + " | ".join(cells) + f" | {hcell} |",
        "",
    ]
    evaluated = [e for e in entries if e.miou is not None]
    if evaluated:
        sizes = ", ".join(f"{COLUMN_LABELS.get(e.dataset, e.dataset)} {e.best_base_size}" for e in evaluated)
        lines.append(f"Best base size per dataset (short side): {sizes}.")
    for e in entries:
        if e.missing is not None:
            lines.append(f"- {e.dataset}: missing ({e.missing})")
    if not complete:
        lines.append("The harmonic mean is incomplete: it needs every dataset of the table.")
    return "\n".join(lines) + "\n"


def zero_shot_summary(model_label: str, entries: Sequence[ZeroShotEntry], split: str, extra: Mapping | None = None) -> dict:
    hmean, complete = _hmean(entries)
    return {
        "model": model_label,
        "split": split,
        "datasets": [
            {
                "dataset": e.dataset,
                "column": COLUMN_LABELS.get(e.dataset, e.dataset),
                "miou": None if e.miou is None else round(100 * e.miou, 4),
                "best_base_size": e.best_base_size,
                "miou_by_base_size": {str(b): (None if math.isnan(v) else round(100 * v, 4)) for b, v in e.by_base_size.items()},
                "status": "missing" if e.missing is not None else "ok",
                "missing": e.missing,
            }
            for e in entries
        ],
        "harmonic_mean": None if hmean is None else round(hmean, 4),
        "harmonic_mean_complete": complete,
        **(dict(extra) if extra else {}),
    }
