"""`relabel --mode mseg` reproduces MSeg's relabeled labels pixel for pixel (issue 13 item 4), and every report
counts the pixels where the two modes differ.

Expected arrays are derived by hand from mseg-api's mseg_write_relabeled_segments.py: remap with
X_to_X-relabeled, then per record, in record order, swap_px_inside_mask(label, segment mask, original, new,
require_strict_boundaries) with strict boundaries on coco, bdd, mapillary and sunrgbd only: the whole mask
gets the new class. The default checked mode changes only the segment's pixels of the original class.
"""

from __future__ import annotations

import numpy as np
import pytest

from mseg_semantic.prepare.relabel import relabel_dataset
from mseg_semantic.prepare.remap import remap_dataset
from mseg_semantic.tool.prepare import main

from prepare_helpers import class_id, read_png, write_json, write_png, write_rgb_image
from test_prepare_relabel import write_records, write_remapped_ade20k, write_remapped_bdd, write_remapped_cityscapes
from test_prepare_remap import write_coco

MODES = ("checked", "mseg")


def relabel_both(key, root, records):
    """{mode: report} after relabeling in each mode (the second run rewrites the labels)."""
    return {mode: relabel_dataset(key, root, workers=1, records_dir=records, progress=False, mode=mode) for mode in MODES}


def differing(report, target):
    return report["targets"][target]["pixels_differing_between_modes"]


# ---------------------------------------------------------------------------------------------- whole-mask datasets
def test_cityscapes_mseg_overwrites_the_whole_polygon_in_record_order(tmp_path):
    base = tmp_path / "Cityscapes"
    raw = np.full((6, 8), 7, np.uint8)  # road
    raw[1:4, 1:4] = 25  # a rider, 9 px; its polygon (object 1) also covers the road column x=4: 12 px
    objects = [{"label": "road", "polygon": [[0, 0], [7, 0], [7, 5], [0, 5]]},
               {"label": "rider", "polygon": [[1, 1], [4, 1], [4, 3], [1, 3]]},
               {"label": "rider", "polygon": [[4, 2], [6, 2], [6, 4], [4, 4]]}]  # object 2 overlaps object 1 at (4, 2..3)
    write_remapped_cityscapes(tmp_path, raw, objects)
    entry = "seqtraincity_traincity_000000_000019_leftImg8bit_{}.jpg"
    records = write_records(tmp_path / "rec", [
        ("cityscapes", "train", "rider_other", "motorcyclist", [entry.format(1)]),
        ("cityscapes", "train", "rider_other", "bicyclist", [entry.format(2)]),  # all road: checked mode skips it
    ])
    reports = relabel_both("cityscapes", tmp_path, records)
    for rel, folder in (("cityscapes-19-relabeled", "gtFine_19cls_relabeled"), ("cityscapes-34-relabeled", "gtFine_34cls_relabeled")):
        out = read_png(base / f"{folder}/train/traincity/traincity_000000_000019_gtFine_labelIds.png")
        road, moto, bike = (class_id(rel, n) for n in ("road", "motorcyclist", "bicyclist"))
        mseg = np.full((6, 8), road, np.uint8)
        mseg[1:4, 1:5] = moto  # object 1's whole polygon, road column included
        mseg[2:5, 4:7] = bike  # then object 2's, over object 1 where they overlap
        assert np.array_equal(out, mseg), rel  # the last run was --mode mseg
        checked = np.full((6, 8), road, np.uint8)
        checked[1:4, 1:4] = moto
        assert differing(reports["mseg"], rel) == differing(reports["checked"], rel) == int((mseg != checked).sum()) == 10
        assert reports["checked"]["targets"][rel]["mismatch"] == 1 and reports["mseg"]["targets"][rel]["mismatch"] == 0


def test_idd_mseg_overwrites_what_a_later_polygon_drew_over(tmp_path):
    base = tmp_path / "IDD/IDD_Segmentation"
    objects = [{"label": "road", "polygon": [[0, 0], [5, 0], [5, 3], [0, 3]]},
               {"label": "rider", "polygon": [[1, 1], [3, 1], [3, 3], [1, 3]]},  # 3x3
               {"label": "person", "polygon": [[3, 1], [4, 1], [4, 3], [3, 3]]}]  # drawn on top of the rider's x=3
    for split in ("train", "val"):
        write_json(base / f"gtFine/{split}/7/000123_gtFine_polygons.json", {"imgHeight": 4, "imgWidth": 6, "objects": objects})
        write_rgb_image(base / f"leftImg8bit/{split}/7/000123_leftImg8bit.png", 4, 6)
    remap_dataset("idd", tmp_path, workers=1, progress=False)
    records = write_records(tmp_path / "rec", [("idd", "train", "rider_other", "bicyclist", ["seq7_000123_leftImg8bit_1.jpg"])])
    reports = relabel_both("idd", tmp_path, records)
    rel = "idd-39-relabeled"
    road, bike, person = (class_id(rel, n) for n in ("road", "bicyclist", "person"))
    out = read_png(base / "gtFine39_relabeled/train/7/000123_gtFine_labelids.png")
    assert out[1:4, 1:4].tolist() == [[bike] * 3] * 3  # MSeg: the whole rider polygon, the person column too
    assert out[1, 4] == person and out[0, 0] == road
    assert differing(reports["mseg"], rel) == differing(reports["checked"], rel) == 3


def test_ade20k_mseg_overwrites_the_whole_resized_instance(tmp_path):
    base = write_remapped_ade20k(tmp_path)
    seg = np.zeros((8, 12, 3), np.uint8)  # the 2016 full release MSeg used, at twice the size
    seg[:, 0:8, 2] = 70  # instance 70: three fence columns and one wall column of the challenge label
    seg[:, 8:12, 2] = 3
    write_png(tmp_path / "ADE20K/ADE20K_2016_07_26/images/training/a/abbey/ADE_train_00000001_seg.png", seg)
    records = write_records(tmp_path / "rec", [("ade20k-v1", "train", "fence", "guard_rail", ["ADE_train_00000001_70.png"])])
    reports = relabel_both("ade20k", tmp_path, records)
    rel = "ade20k-150-relabeled"
    guard, wall_r = class_id(rel, "guard_rail"), class_id(rel, "wall")
    out = read_png(base / "annotations_semseg150_relabeled/training/ADE_train_00000001.png")
    assert out.tolist() == [[guard] * 4 + [wall_r] * 2] * 4
    assert differing(reports["mseg"], rel) == 4 and reports["mseg"]["instance_release"] == "ADE20K_2016_07_26"


# ---------------------------------------------------------------------------------------------- pure-segment datasets
def test_coco_bdd_mapillary_sunrgbd_modes_agree(tmp_path):
    """Segments come from the label's own annotation and MSeg required them pure: both modes write the same
    pixels, and a record whose segment is not of its original class is reported, not applied, in both."""
    base = tmp_path / "COCOPanoptic"
    cabinet, person = class_id("coco-panoptic-201", "cabinet-merged"), class_id("coco-panoptic-201", "person")
    for split in ("train", "val"):
        annotation = write_coco(base, split, "000000000139", np.array([[5, 5, 6], [7, 7, 0]]), [(5, cabinet), (6, cabinet), (7, person)])
        write_json(base / f"annotations/panoptic_{split}2017.json", {"annotations": [annotation]})
    remap_dataset("coco", tmp_path, workers=1, progress=False)
    records = write_records(tmp_path / "rec", [("cocopanoptic", "train", "cabinet", "desk", ["000000000139_5.png"]),
                                               ("cocopanoptic", "train", "cabinet", "unlabeled", ["000000000139_7.png"])])
    outputs = {}
    for mode in MODES:
        report = relabel_dataset("coco", tmp_path, workers=1, records_dir=records, progress=False, mode=mode)
        outputs[mode] = read_png(base / "semantic_relabeled133/train2017/000000000139.png")
        rel = "coco-panoptic-133-relabeled"
        assert differing(report, rel) == 0 and report["targets"][rel]["mismatch"] == 1
    assert np.array_equal(outputs["checked"], outputs["mseg"])

    bdd = write_remapped_bdd(tmp_path)
    b_person = class_id("bdd", "person")
    records = write_records(tmp_path / "rec_bdd", [("bdd", "train", "person", "bicyclist", [f"0a0a-train_{b_person}.jpg"])])
    for mode in MODES:
        report = relabel_dataset("bdd", tmp_path, workers=1, records_dir=records, progress=False, mode=mode)
        rel = "bdd-relabeled"
        assert differing(report, rel) == 0
        assert read_png(bdd / "seg_relabeled/labels/train/0a0a-train_train_id.png").tolist() == [
            [class_id(rel, "bicyclist"), class_id(rel, "road"), class_id(rel, "bicyclist")]]


@pytest.mark.parametrize("flag", [["relabel", "cityscapes", "--mode", "mseg"], ["all", "--datasets", "cityscapes", "--relabel-mode", "mseg"]])
def test_the_mode_flag_reaches_the_report(tmp_path, flag):
    base = tmp_path / "Cityscapes"
    raw = np.full((2, 3), 7, np.uint8)
    for split in ("train", "val"):
        stem = f"{split}city_000000_000019"
        write_png(base / f"gtFine/{split}/{split}city/{stem}_gtFine_labelIds.png", raw)
        write_json(base / f"gtFine/{split}/{split}city/{stem}_gtFine_polygons.json", {"imgHeight": 2, "imgWidth": 3, "objects": []})
        write_rgb_image(base / f"leftImg8bit/{split}/{split}city/{stem}_leftImg8bit.png", 2, 3)
    remap_dataset("cityscapes", tmp_path, workers=1, progress=False)
    if flag[0] == "all":  # the earlier steps count as done here
        for step in ("download", "extract", "remap"):
            marker = tmp_path / ".mseg_prepare" / "done" / f"cityscapes.{step}"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("{}")
    records = write_records(tmp_path / "rec", [("cityscapes", "train", "rider_other", "bicyclist", ["seqtraincity_traincity_000000_000019_leftImg8bit_0.jpg"])])
    main([*flag, "--root", str(tmp_path), "--records", str(records), "--no-progress", "-q", "--workers", "1"])
    report = (tmp_path / ".mseg_prepare/reports/relabel_cityscapes.json").read_text()
    assert '"mode": "mseg"' in report and '"pixels_differing_between_modes": 0' in report
