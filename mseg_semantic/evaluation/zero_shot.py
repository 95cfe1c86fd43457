"""MSeg's zero-shot benchmark: the six held-out test datasets, the best of three base sizes each, harmonic mean.

As in MSeg's evaluation scripts: each test dataset's ``val`` list, single scale by default, base sizes
360 / 720 / 1080 with the maximum mIoU per dataset reported (MSeg's README: "We run inference with the shorter
side of each test image at three resolutions (360p, 720p, 1080p), and take the max"). The table has MSeg's
README columns: VOC, PASCAL Context, CamVid, WildDash, KITTI, ScanNet, harmonic mean.

The table is computed with MSeg's formula (``miou_mseg``: the mean over every class of the test taxonomy, a class
absent from prediction and ground truth counting 0), so that it can sit next to MSeg's published numbers. The
other formula (``miou``: such classes left out, the Cityscapes scripts' rule) follows as a second, labelled
table; each formula picks its own best base size. On a whole test set the two agree unless a class never occurs.

A dataset whose split list is not on disk is reported as missing with the path that was looked for, and the
harmonic mean is then marked incomplete instead of being computed over the others. A table computed on a slice
of each list (``TEST.index_start`` / ``index_step``) says so in its first line and in its JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from mseg_semantic.errors import UnknownNameError
from mseg_semantic.evaluation.metrics import harmonic_mean
from mseg_semantic.taxonomy import ZERO_SHOT_DATASETS, Catalog

__all__ = [
    "ZERO_SHOT_DATASETS",
    "FORMULAS",
    "TABLE_FORMULA",
    "ZeroShotEntry",
    "column_label",
    "run_zero_shot",
    "format_zero_shot_table",
    "zero_shot_figure",
    "zero_shot_summary",
]

TABLE_FORMULA = "miou_mseg"
FORMULAS = {
    "miou_mseg": "MSeg's formula: mean IoU over every class of the test taxonomy, a class absent from prediction and "
                 "ground truth counting 0 (as in MSeg's published table)",
    "miou": "classes absent from prediction and ground truth left out of the mean (the Cityscapes scripts' rule)",
}

def column_label(dataset: str) -> str:
    """The dataset's title in the dataset table (MSeg's column names: VOC, PC, CamVid, WD, KITTI, SN), else its name."""
    try:
        return Catalog.builtin().dataset(dataset).title
    except UnknownNameError:
        return dataset


@dataclass
class ZeroShotEntry:
    dataset: str
    by_base_size: dict[int, dict[str, float]] = field(default_factory=dict)  # base size -> {formula: mIoU (fraction)}
    missing: str | None = None  # why it was not evaluated

    def best_base_size(self, formula: str = TABLE_FORMULA) -> int | None:
        finite = {b: v[formula] for b, v in self.by_base_size.items() if not math.isnan(v[formula])}
        return max(finite, key=finite.get) if finite else None

    def value(self, formula: str = TABLE_FORMULA) -> float | None:
        best = self.best_base_size(formula)
        return None if best is None else self.by_base_size[best][formula]

    @property
    def miou(self) -> float | None:
        """The table's number: MSeg's formula at its best base size."""
        return self.value(TABLE_FORMULA)


def run_zero_shot(
    evaluate: Callable[[str, int], Mapping[str, float]],
    datasets: Sequence[str],
    base_sizes: Sequence[int],
    missing: Callable[[str], str | None],
) -> list[ZeroShotEntry]:
    """``evaluate(dataset, base_size) -> {formula: mIoU}`` (every key of :data:`FORMULAS`) for every available
    dataset and base size."""
    if not base_sizes:
        raise ValueError("TEST.benchmark_base_sizes is empty; MSeg uses [360, 720, 1080]")
    entries = []
    for dataset in ordered(datasets):
        reason = missing(dataset)
        entry = ZeroShotEntry(dataset, missing=reason)
        if reason is None:
            for base_size in base_sizes:
                scores = evaluate(dataset, int(base_size))
                entry.by_base_size[int(base_size)] = {formula: float(scores[formula]) for formula in FORMULAS}
        entries.append(entry)
    return entries


def ordered(datasets: Sequence[str]) -> list[str]:
    """MSeg's column order first, other datasets after in the given order; duplicates dropped."""
    known = [d for d in ZERO_SHOT_DATASETS if d in datasets]
    return known + [d for d in dict.fromkeys(datasets) if d not in ZERO_SHOT_DATASETS]


def _hmean(entries: Sequence[ZeroShotEntry], formula: str = TABLE_FORMULA) -> tuple[float | None, bool]:
    complete = all(e.value(formula) is not None for e in entries) and bool(entries)
    if not complete:
        return None, False
    return harmonic_mean([100 * e.value(formula) for e in entries]), True


def _table(model_label: str, entries: Sequence[ZeroShotEntry], formula: str) -> list[str]:
    heads = [column_label(e.dataset) + " mIoU" for e in entries]
    hmean, complete = _hmean(entries, formula)
    cells = [f"{100 * e.value(formula):.1f}" if e.value(formula) is not None else "missing" for e in entries]
    hcell = f"{hmean:.1f}" if complete else "incomplete"
    lines = [
        "| Model | " + " | ".join(heads) + " | h. mean |",
        "| :---: | " + " | ".join(":---:" for _ in entries) + " | :---: |",
        f"| {model_label} | " + " | ".join(cells) + f" | {hcell} |",
        "",
    ]
    evaluated = [e for e in entries if e.value(formula) is not None]
    if evaluated:
        sizes = ", ".join(f"{column_label(e.dataset)} {e.best_base_size(formula)}" for e in evaluated)
        lines.append(f"Best base size per dataset (short side): {sizes}.")
    return lines


def format_zero_shot_table(model_label: str, entries: Sequence[ZeroShotEntry], partial: str | None = None) -> str:
    """Markdown: MSeg's table (MSeg's formula, the layout of its README; mIoU in percent, one decimal), then the
    other formula's table. ``partial``: why the numbers cover only part of each list (said first)."""
    lines = []
    if partial:
        lines += [f"**PARTIAL**: {partial}. Not comparable with MSeg's published numbers.", ""]
    lines += [f"mIoU by {FORMULAS[TABLE_FORMULA]}; the best of the base sizes per dataset, harmonic mean over the datasets.", ""]
    lines += _table(model_label, entries, TABLE_FORMULA)
    for e in entries:
        if e.missing is not None:
            lines.append(f"- {e.dataset}: missing ({e.missing})")
    if not _hmean(entries)[1]:
        lines.append("The harmonic mean is incomplete: it needs every dataset of the table.")
    if any(e.by_base_size for e in entries):
        lines += ["", f"For reference, mIoU with {FORMULAS['miou']}:", ""]
        lines += _table(model_label, entries, "miou")
    return "\n".join(lines) + "\n"


def zero_shot_figure(model_label: str, entries: Sequence[ZeroShotEntry], partial: str | None = None):
    """The table as grouped bars (RGB uint8), both formulas (:func:`mseg_semantic.evaluation.figures.zero_shot_chart`)."""
    from mseg_semantic.evaluation.figures import zero_shot_chart

    def percent(e: ZeroShotEntry, formula: str) -> float | None:
        value = e.value(formula)
        return None if value is None else 100 * value

    labels = [column_label(e.dataset) for e in entries]
    series = [("mIoU, MSeg's formula (the table)", [percent(e, TABLE_FORMULA) for e in entries]),
              ("mIoU, absent classes left out", [percent(e, "miou") for e in entries])]
    title = f"{model_label}: zero-shot mIoU, best base size per dataset" + (" (PARTIAL: a slice of each list)" if partial else "")
    return zero_shot_chart(title, labels, series, [_hmean(entries, TABLE_FORMULA)[0], _hmean(entries, "miou")[0]])


def _rounded(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(100 * value, 4)


def zero_shot_summary(model_label: str, entries: Sequence[ZeroShotEntry], split: str, extra: Mapping | None = None,
                      partial: str | None = None) -> dict:
    hmean, complete = _hmean(entries, TABLE_FORMULA)
    hmean_other, _ = _hmean(entries, "miou")
    return {
        "model": model_label,
        "split": split,
        "partial": partial,
        "table_formula": TABLE_FORMULA,
        "formulas": dict(FORMULAS),
        "datasets": [
            {
                "dataset": e.dataset,
                "column": column_label(e.dataset),
                "miou_mseg": _rounded(e.value(TABLE_FORMULA)),
                "best_base_size": e.best_base_size(TABLE_FORMULA),
                "miou_mseg_by_base_size": {str(b): _rounded(v[TABLE_FORMULA]) for b, v in e.by_base_size.items()},
                "miou": _rounded(e.value("miou")),
                "miou_best_base_size": e.best_base_size("miou"),
                "miou_by_base_size": {str(b): _rounded(v["miou"]) for b, v in e.by_base_size.items()},
                "status": "missing" if e.missing is not None else "ok",
                "missing": e.missing,
            }
            for e in entries
        ],
        "harmonic_mean": None if hmean is None else round(hmean, 4),
        "harmonic_mean_complete": complete,
        "harmonic_mean_miou": None if hmean_other is None else round(hmean_other, 4),
        **(dict(extra) if extra else {}),
    }
