"""Check a prepared dataset: every list line resolves, labels are single-channel uint8 with ids in range and
the image's size, and each split has the number of images the dataset should have."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mseg_semantic.prepare.remap import Job, _CTX, default_workers, run_jobs, write_report
from mseg_semantic.prepare.sources import expected_splits
from mseg_semantic.prepare.specs import dataset_dir, get_spec, list_file
from mseg_semantic.prepare.tables import IGNORE

MAX_SHOWN = 20


@dataclass
class VerifyResult:
    dataset: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # taxonomy -> split -> images
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_label(job: Job) -> str:
    """Empty string when the label is fine, else the problem."""
    base = Path(_CTX["base"])
    label_path = base / job.output
    try:
        with Image.open(label_path) as img:
            mode, size = img.mode, img.size
            if mode not in ("L", "P"):
                return f"{job.output}: mode {mode}, expected an 8-bit single-channel PNG"
            label = np.array(img)
        with Image.open(base / job.image) as rgb:  # header only: no decode
            if rgb.size != size:
                return f"{job.output}: size {size} differs from image {job.image} {rgb.size}"
    except OSError as exc:
        return f"{job.output}: unreadable ({exc})"
    values = np.unique(label)
    bad = values[(values >= _CTX["num_classes"]) & (values != IGNORE)]
    if bad.size:
        return f"{job.output}: ids {bad.tolist()[:10]} outside 0..{_CTX['num_classes'] - 1} (and 255)"
    return ""


def verify_dataset(key: str, root: Path, check_labels: bool = True, workers: int | None = None,
                   progress: bool = True) -> VerifyResult:
    from mseg_semantic.taxonomy import load_class_names

    spec = get_spec(key)
    root = Path(root)
    result = VerifyResult(key)
    for taxonomy in (spec.taxonomy, *spec.relabeled):
        base = dataset_dir(root, taxonomy)
        num_classes = len(load_class_names(taxonomy))
        result.counts[taxonomy] = {}
        for split, expected in expected_splits(spec, root).items():
            listed = list_file(root, taxonomy, split)
            if not listed.is_file():
                result.problems.append(f"{taxonomy}/{split}: list file {listed} is missing")
                continue
            jobs, missing, malformed = [], [], []
            for lineno, line in enumerate(listed.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                cells = line.split()
                if len(cells) != 2:
                    malformed.append(f"{listed}:{lineno}: expected 'image label', got {line!r}")
                    continue
                image, label = cells
                for rel in (image, label):
                    if not (base / rel).is_file():
                        missing.append(f"{taxonomy}/{split}: {base / rel} (line {lineno}) does not exist")
                jobs.append(Job(split, image, label, label))
            result.counts[taxonomy][split] = len(jobs)
            if len(jobs) != expected:
                result.problems.append(f"{taxonomy}/{split}: {len(jobs)} images, expected {expected}")
            for text in (malformed, missing):
                result.problems += text[:MAX_SHOWN]
                if len(text) > MAX_SHOWN:
                    result.problems.append(f"{taxonomy}/{split}: ... and {len(text) - MAX_SHOWN} more")
            if check_labels and not missing and not malformed:
                context = {"base": str(base), "num_classes": num_classes}
                found = [p for p in run_jobs(jobs, context, workers or default_workers(), progress,
                                             f"verify {taxonomy} {split}", fn=_check_label) if p]
                result.problems += [f"{taxonomy}/{split}: {p}" for p in found[:MAX_SHOWN]]
                if len(found) > MAX_SHOWN:
                    result.problems.append(f"{taxonomy}/{split}: ... and {len(found) - MAX_SHOWN} more bad labels")
    write_report(root, f"verify_{key}", {"dataset": key, "counts": result.counts, "problems": result.problems,
                                         "labels_checked": check_labels})
    return result
