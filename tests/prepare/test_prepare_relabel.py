"""Relabeling on tiny datasets in their real raw formats, with records in mseg-api's layout, pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest

from mseg_semantic.prepare.records import load_records, read_compiled, read_reference_records, write_compiled
from mseg_semantic.prepare.relabel import RelabelError, parse_entry, relabel_dataset
from mseg_semantic.prepare.remap import remap_dataset

from prepare_helpers import class_id, read_png, write_json, write_png, write_rgb_image

U = 255


def write_records(directory, rows):
    """rows: (dataset, split, original, new, [entries]); one segment list per row."""
    lines = ["record_group\tdataset\tsplit\torig_universal_class\tnew_universal_class\tsegment_list_file"]
    for i, (dataset, split, original, new, entries) in enumerate(rows):
        name = f"lists/{dataset}_{split}_{i}.txt"
        (directory / "relabeled_data" / "lists").mkdir(parents=True, exist_ok=True)
        (directory / "relabeled_data" / name).write_text("".join(e + "\n" for e in entries))
        lines.append(f"group\t{dataset}\t{split}\t{original}\t{new}\t{name}")
    (directory / "relabeling_update_records.tsv").write_text("\n".join(lines) + "\n")
    return directory


def statuses(report, target):
    return sorted((r["entry"], r["status"]) for r in report["targets"][target]["problem_records"])


def relabel(key, root, records, **kw):
    kw.setdefault("workers", 1)
    return relabel_dataset(key, root, records_dir=records, progress=False, **kw)


def test_coco_segments_move_and_bad_records_are_reported(tmp_path):
    from test_prepare_remap import write_coco

    base = tmp_path / "COCOPanoptic"
    cabinet, person = class_id("coco-panoptic-201", "cabinet-merged"), class_id("coco-panoptic-201", "person")
    seg = np.array([[5, 5, 6], [7, 7, 0]])
    for split in ("train", "val"):
        annotation = write_coco(base, split, "000000000139", seg, [(5, cabinet), (6, cabinet), (7, person)])
        write_json(base / f"annotations/panoptic_{split}2017.json", {"annotations": [annotation]})
    remap_dataset("coco", tmp_path, workers=1, progress=False)
    records = write_records(tmp_path / "rec", [
        ("cocopanoptic", "train", "cabinet", "desk", ["000000000139_5.png", "000000000139_99.png", "000000000999_5.png"]),
        ("cocopanoptic-v1", "train", "cabinet", "unlabeled", ["000000000139_7.png"]),  # segment 7 is a person
        ("cocop", "val", "person", "unlabeled", ["000000000139_7.png"]),
    ])
    report = relabel("coco", tmp_path, records)
    rel = "coco-panoptic-133-relabeled"
    desk, cab, pers = (class_id(rel, n) for n in ("desk", "cabinet", "person"))
    train = read_png(base / "semantic_relabeled133/train2017/000000000139.png")
    assert train.tolist() == [[desk, desk, cab], [pers, pers, U]]
    val = read_png(base / "semantic_relabeled133/val2017/000000000139.png")
    assert val.tolist() == [[cab, cab, cab], [U, U, U]]
    part = report["targets"][rel]
    assert (part["applied"], part["not_found"], part["mismatch"], part["image_not_in_list"]) == (2, 1, 1, 1)
    assert statuses(report, rel) == [("000000000139_7.png", "mismatch"), ("000000000139_99.png", "not_found"),
                                     ("000000000999_5.png", "image_not_in_list")]
    assert part["pixels_differing_between_modes"] == 0  # pure segments: MSeg's output is the same
    lines = (tmp_path / "dataset_lists" / rel / "list" / "val.txt").read_text().split()
    assert lines == ["images/val2017/000000000139.jpg", "semantic_relabeled133/val2017/000000000139.png"]
    with pytest.raises(RelabelError, match="--strict"):
        relabel("coco", tmp_path, records, strict=True)


def write_remapped_cityscapes(root, raw, objects):
    """One 6 x 8 Cityscapes image per split with label ids ``raw`` and polygons ``objects``, remapped."""
    base = root / "Cityscapes"
    for split in ("train", "val"):
        stem = f"{split}city_000000_000019"
        write_png(base / f"gtFine/{split}/{split}city/{stem}_gtFine_labelIds.png", raw)
        write_json(base / f"gtFine/{split}/{split}city/{stem}_gtFine_polygons.json", {"imgHeight": 6, "imgWidth": 8, "objects": objects})
        write_rgb_image(base / f"leftImg8bit/{split}/{split}city/{stem}_leftImg8bit.png", 6, 8)
    remap_dataset("cityscapes", root, workers=1, progress=False)


def test_cityscapes_rider_polygons_become_the_record_class(tmp_path):
    base = tmp_path / "Cityscapes"
    raw = np.full((6, 8), 7, np.uint8)  # road
    raw[1:4, 1:4] = 25  # rider (object 1)
    raw[1:4, 5:8] = 25  # rider (object 2, no record: stays the table's default, bicyclist)
    objects = [{"label": "road", "polygon": [[0, 0], [7, 0], [7, 5], [0, 5]]},
               {"label": "rider", "polygon": [[1, 1], [3, 1], [3, 3], [1, 3]]},
               {"label": "rider", "polygon": [[5, 1], [7, 1], [7, 3], [5, 3]]}]
    write_remapped_cityscapes(tmp_path, raw, objects)
    records = write_records(tmp_path / "rec", [
        ("cityscapes", "train", "rider_other", "motorcyclist", ["seqtraincity_traincity_000000_000019_leftImg8bit_1.jpg"]),
        ("cityscapes", "val", "rider_other", "person", ["seqvalcity_valcity_000000_000019_leftImg8bit_0.jpg"]),  # a road polygon
    ])
    report = relabel("cityscapes", tmp_path, records)
    for rel, folder in (("cityscapes-19-relabeled", "gtFine_19cls_relabeled"), ("cityscapes-34-relabeled", "gtFine_34cls_relabeled")):
        out = read_png(base / f"{folder}/train/traincity/traincity_000000_000019_gtFine_labelIds.png")
        expected = np.full((6, 8), class_id(rel, "road"), np.uint8)
        expected[1:4, 5:8] = class_id(rel, "bicyclist")
        expected[1:4, 1:4] = class_id(rel, "motorcyclist")
        assert np.array_equal(out, expected), rel
        assert statuses(report, rel) == [("seqvalcity_valcity_000000_000019_leftImg8bit_0.jpg", "mismatch")]
        # MSeg applied that road-polygon record anyway: the whole 6 x 8 val image would have become person
        assert report["targets"][rel]["pixels_differing_between_modes"] == 48


def test_idd_polygon_records(tmp_path):
    base = tmp_path / "IDD/IDD_Segmentation"
    objects = [{"label": "road", "polygon": [[0, 0], [5, 0], [5, 2], [0, 2]]},
               {"label": "rider", "polygon": [[1, 1], [2, 1], [2, 2], [1, 2]]}]
    for split in ("train", "val"):
        write_json(base / f"gtFine/{split}/7/000123_gtFine_polygons.json", {"imgHeight": 4, "imgWidth": 6, "objects": objects})
        write_rgb_image(base / f"leftImg8bit/{split}/7/000123_leftImg8bit.png", 4, 6)
    remap_dataset("idd", tmp_path, workers=1, progress=False)
    records = write_records(tmp_path / "rec", [("idd", "train", "rider_other", "bicyclist", ["seq7_000123_leftImg8bit_1.jpg"])])
    assert relabel("idd", tmp_path, records)["targets"]["idd-39-relabeled"]["pixels_differing_between_modes"] == 0
    rel = "idd-39-relabeled"
    out = read_png(base / "gtFine39_relabeled/train/7/000123_gtFine_labelids.png")
    assert out[1:3, 1:3].tolist() == [[class_id(rel, "bicyclist")] * 2] * 2
    assert out[0, 0] == class_id(rel, "road") and out[3, 0] == U
    val = read_png(base / "gtFine39_relabeled/val/7/000123_gtFine_labelids.png")
    assert val[1, 1] == class_id(rel, "motorcyclist")  # no record: the table's default for IDD riders


def write_remapped_ade20k(root):
    """One 4 x 6 ADE20K challenge label per split (three fence columns, three wall columns), remapped; returns its
    directory."""
    base = root / "ADE20K/ADEChallengeData2016"
    fence, wall = class_id("ade20k-151", "fence"), class_id("ade20k-151", "wall")
    label = np.full((4, 6), wall, np.uint8)
    label[:, 0:3] = fence
    for split, sub in (("train", "training"), ("val", "validation")):
        write_png(base / f"annotations/{sub}/ADE_{split}_00000001.png", label)
        write_rgb_image(base / f"images/{sub}/ADE_{split}_00000001.jpg", 4, 6)
    remap_dataset("ade20k", root, workers=1, progress=False)
    return base


def test_ade20k_instances_come_from_the_resized_blue_channel(tmp_path):
    base = write_remapped_ade20k(tmp_path)
    records = write_records(tmp_path / "rec", [("ade20k-v1", "train", "fence", "guard_rail", ["ADE_train_00000001_70.png"])])
    with pytest.raises(Exception, match="ADE20K_2016_07_26.zip"):  # instance masks not there yet: the manual step
        relabel("ade20k", tmp_path, records)
    seg = np.zeros((8, 12, 3), np.uint8)  # full release: twice the size, instance id in blue
    seg[:, 0:4, 2] = 70  # instance 70 covers the left two challenge columns
    seg[:, 4:12, 2] = 3
    write_png(tmp_path / "ADE20K/ADE20K_2016_07_26/images/training/a/abbey/ADE_train_00000001_seg.png", seg)
    report = relabel("ade20k", tmp_path, records)
    assert report["targets"]["ade20k-150-relabeled"]["pixels_differing_between_modes"] == 0  # instance = fence region
    rel = "ade20k-150-relabeled"
    out = read_png(base / "annotations_semseg150_relabeled/training/ADE_train_00000001.png")
    guard, fence_r, wall_r = (class_id(rel, n) for n in ("guard_rail", "fence", "wall"))
    assert out[0].tolist() == [guard, guard, fence_r, wall_r, wall_r, wall_r]


def write_remapped_bdd(root):
    """One 1 x 3 BDD label per split (person, road, person), remapped; returns its directory."""
    base = root / "BDD/bdd100k"
    person, road = class_id("bdd", "person"), class_id("bdd", "road")
    for split in ("train", "val"):
        write_png(base / f"seg/labels/{split}/0a0a-{split}_train_id.png", np.array([[person, road, person]], np.uint8))
        write_rgb_image(base / f"seg/images/{split}/0a0a-{split}.jpg", 1, 3)
    remap_dataset("bdd", root, workers=1, progress=False)
    return base


def test_bdd_and_sunrgbd_segments_are_class_regions(tmp_path):
    base = write_remapped_bdd(tmp_path)
    person, road = class_id("bdd", "person"), class_id("bdd", "road")
    records = write_records(tmp_path / "rec", [("bdd", "train", "person", "bicyclist", [f"0a0a-train_{person}.jpg"]),
                                               ("bdd", "val", "person", "unlabeled", [f"0a0a-val_{road}.jpg"])])
    report = relabel("bdd", tmp_path, records)
    rel = "bdd-relabeled"
    assert read_png(base / "seg_relabeled/labels/train/0a0a-train_train_id.png").tolist() == [
        [class_id(rel, "bicyclist"), class_id(rel, "road"), class_id(rel, "bicyclist")]]
    assert statuses(report, rel) == [(f"0a0a-val_{road}.jpg", "mismatch")]
    assert report["targets"][rel]["pixels_differing_between_modes"] == 0

    sun = tmp_path / "SUNRGBD"
    for sub in ("train", "test"):
        write_png(sun / f"label37/{sub}/00000001.png", np.array([[5, 1]], np.uint8))  # chair, wall (38 ids)
        write_rgb_image(sun / f"image/{sub}/img-000001.jpg", 1, 2)
    remap_dataset("sunrgbd", tmp_path, workers=1, progress=False)
    chair37 = class_id("sunrgbd-37", "chair")
    records = write_records(tmp_path / "rec2", [("sunrgbd", "val", "chair_other", "armchair", [f"img-000001_{chair37}.jpg"])])
    assert relabel("sunrgbd", tmp_path, records)["targets"]["sunrgbd-37-relabeled"]["pixels_differing_between_modes"] == 0
    rel = "sunrgbd-37-relabeled"
    assert read_png(sun / "semseg-relabeled37/test/00000001.png").tolist() == [[class_id(rel, "armchair"), class_id(rel, "wall")]]
    assert read_png(sun / "semseg-relabeled37/train/00000001.png").tolist() == [[class_id(rel, "chair_other"), class_id(rel, "wall")]]


def test_mapillary_segments_are_instance_ids(tmp_path):
    from mseg_semantic.prepare.tables import load_table

    base = tmp_path / "MapillaryVistasPublic"
    palette = load_table("mapillary-public66", "mapillary-public65").colors.flatten().tolist()
    raw = np.array([[1, 1, 13]], np.uint8)  # Ground Animal, Ground Animal, Road
    instances = np.array([[256, 257, 13 * 256]], np.uint16)  # two animal instances
    for split, sub in (("train", "training"), ("val", "validation")):
        write_png(base / f"{sub}/labels/img_{split}.png", raw, mode="P", palette=palette + [0] * (768 - len(palette)))
        write_png(base / f"{sub}/instances/img_{split}.png", instances)
        write_rgb_image(base / f"{sub}/images/img_{split}.jpg", 1, 3)
    remap_dataset("mapillary", tmp_path, workers=1, progress=False)
    records = write_records(tmp_path / "rec", [("mapillary-public65", "train", "dog", "cat", ["mapillary_img_train_257.jpg"])])
    report = relabel("mapillary", tmp_path, records, workers=2)
    assert report["targets"]["mapillary-public65-relabeled"]["pixels_differing_between_modes"] == 0
    rel = "mapillary-public65-relabeled"
    assert read_png(base / "training_semseg65_relabeled/labels/img_train.png").tolist() == [
        [class_id(rel, "dog"), class_id(rel, "cat"), class_id(rel, "road")]]


@pytest.mark.parametrize("dataset,entry,expected", [
    ("ade20k", "ADE_train_00015677_182.png", ("ADE_train_00015677", 182)),
    ("cityscapes", "seqhamburg_hamburg_000000_052122_leftImg8bit_54.jpg", ("hamburg/hamburg_000000_052122_leftImg8bit", 54)),
    ("idd", "seq173_316862_leftImg8bit_34.jpg", ("173/316862_leftImg8bit", 34)),
    ("coco", "000000024880_7237508.png", ("000000024880", 7237508)),
    ("mapillary", "mapillary_czkO_9In4u30opBy5H1uLg_259.jpg", ("czkO_9In4u30opBy5H1uLg", 259)),
    ("bdd", "0f4e8f1e-6ba53d52_11.jpg", ("0f4e8f1e-6ba53d52", 11)),
    ("sunrgbd", "img-000152_4.jpg", ("img-000152", 4)),
])
def test_segment_entries_parse(dataset, entry, expected):
    assert parse_entry(dataset, entry) == expected


def test_shipped_records_match_msegs_counts_and_round_trip(tmp_path):
    counts = {key: len(read_compiled(key)) for key in ("ade20k", "bdd", "cityscapes", "coco", "idd", "mapillary", "sunrgbd")}
    assert sum(counts.values()) == 226413  # every entry of the 381 segment lists the records name
    records = write_records(tmp_path / "rec", [("bdd", "train", "person", "bicyclist", ["a_11.jpg", "b_11.jpg"])])
    write_compiled(read_reference_records(records), tmp_path / "compiled")
    assert [r.entry for r in load_records("bdd", tmp_path / "compiled")] == ["a_11.jpg", "b_11.jpg"]
    for key, items in ((k, read_compiled(k)) for k in counts):
        for record in items[:: max(1, len(items) // 50)]:
            parse_entry(key, record.entry)  # every shipped entry format is understood
