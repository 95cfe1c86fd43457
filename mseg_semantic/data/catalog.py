"""Where each dataset lives under the common data root, and where its split lists are.

MSeg's on-disk convention: one directory per dataset under a common root, and split lists whose lines are
``rgb_relpath label_relpath`` relative to that dataset's directory. ``mseg-prepare`` writes the lists to
``<data_root>/dataset_lists/<name>/list/<split>.txt`` (MSeg's list layout); a config can point any dataset
elsewhere with ``DATA.dataset_roots`` / ``DATA.dataset_lists``. Nothing here is an absolute path: the root
comes from the config or the ``MSEG_DATA_ROOT`` environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mseg_semantic.errors import UnknownNameError, UserError, did_you_mean

DATA_ROOT_ENV = "MSEG_DATA_ROOT"

# taxonomy name -> dataset directory relative to the data root (MSeg's mseg_dataset layout). The relabeled
# label sets and the raw taxonomies live beside the semseg labels of the same dataset.
DATASET_DIRS: dict[str, str] = {
    "ade20k-150": "ADE20K/ADEChallengeData2016",
    "ade20k-150-relabeled": "ADE20K/ADEChallengeData2016",
    "ade20k-151": "ADE20K/ADEChallengeData2016",
    "bdd": "BDD/bdd100k",
    "bdd-relabeled": "BDD/bdd100k",
    "cityscapes-19": "Cityscapes",
    "cityscapes-19-relabeled": "Cityscapes",
    "cityscapes-34": "Cityscapes",
    "cityscapes-34-relabeled": "Cityscapes",
    "coco-panoptic-133": "COCOPanoptic",
    "coco-panoptic-133-relabeled": "COCOPanoptic",
    "coco-panoptic-201": "COCOPanoptic",
    "idd-39": "IDD/IDD_Segmentation",
    "idd-39-relabeled": "IDD/IDD_Segmentation",
    "idd-40": "IDD/IDD_Segmentation",
    "mapillary-public65": "MapillaryVistasPublic",
    "mapillary-public65-relabeled": "MapillaryVistasPublic",
    "mapillary-public66": "MapillaryVistasPublic",
    "sunrgbd-37": "SUNRGBD",
    "sunrgbd-37-relabeled": "SUNRGBD",
    "sunrgbd-38": "SUNRGBD",
    "camvid-11": "Camvid",
    "camvid-32": "Camvid",
    "kitti-19": "KITTI",
    "kitti-34": "KITTI",
    "pascal-context-60": "PASCAL_Context",
    "pascal-context-460": "PASCAL_Context",
    "voc2012": "PASCAL_VOC_2012",
    "scannet-20": "ScanNet/scannet_frames_25k",
    "scannet-41": "ScanNet/scannet_frames_25k",
    "wilddash-19": "WildDash",
    "wilddash-34": "WildDash",
}


@dataclass(frozen=True)
class DatasetLocation:
    name: str
    root: Path  # the directory the list's relative paths start from
    list_file: Path


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The configured root, else ``$MSEG_DATA_ROOT``; a clear error when neither is set."""
    value = str(data_root) if data_root else os.environ.get(DATA_ROOT_ENV, "")
    if not value:
        raise UserError(f"no data root: set DATA.data_root in the config (data_root=/path) or the {DATA_ROOT_ENV} environment variable")
    return Path(value).expanduser()


def default_list_file(data_root: Path, name: str, split: str) -> Path:
    return data_root / "dataset_lists" / name / "list" / f"{split}.txt"


def locate(
    name: str,
    split: str,
    data_root: str | os.PathLike | None,
    dataset_roots: Mapping[str, str] | None = None,
    dataset_lists: Mapping[str, Mapping[str, str]] | None = None,
) -> DatasetLocation:
    """Dataset directory and list file of ``name``/``split``, config overrides first, then the catalog."""
    root_base = resolve_data_root(data_root)
    dataset_roots = dataset_roots or {}
    dataset_lists = dataset_lists or {}
    if name in dataset_roots:
        root = root_base / Path(dataset_roots[name]).expanduser()  # an absolute override replaces the base
    elif name in DATASET_DIRS:
        root = root_base / DATASET_DIRS[name]
    else:
        known = ", ".join(sorted(DATASET_DIRS))
        raise UnknownNameError(f"dataset {name!r} is not in the catalog{did_you_mean(name, DATASET_DIRS)} and DATA.dataset_roots has no entry for it; known datasets: {known}")
    lists = dataset_lists.get(name, {})
    if split in lists:
        list_file = root_base / Path(lists[split]).expanduser()
    else:
        list_file = default_list_file(root_base, name, split)
    return DatasetLocation(name=name, root=root, list_file=list_file)
