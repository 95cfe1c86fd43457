"""Parity with MSeg: embedded sample tables (always run) and a full check against MSeg's data (when present).

The sample tables were read off MSeg's MSeg_master.tsv and names files (MSeg's own algorithm: a source class maps
to the universal row that names it; the `unlabeled` row is 255; a test class receives every row naming it).
"""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mseg_semantic.taxonomy import (
    DEFAULT_TEST_DATASETS,
    DEFAULT_TRAIN_DATASETS,
    UNRELABELED_TRAIN_DATASETS,
    NaiveTaxonomyConverter,
    TaxonomyConverter,
    load_class_colors,
    load_class_names,
)

# (dataset, class id, class name, universal id, universal name)
TRAIN_SAMPLES = [
    ("ade20k-150", 0, "airplane", 179, "airplane"),
    ("ade20k-150", 10, "bar", 255, "unlabeled"),
    ("ade20k-150", 32, "canopy", 255, "unlabeled"),
    ("ade20k-150", 42, "computer", 255, "unlabeled"),
    ("ade20k-150", 78, "minibike", 178, "motorcycle"),
    ("ade20k-150", 90, "plant", 255, "unlabeled"),
    ("ade20k-150", 98, "railing", 145, "railing_banister"),
    ("ade20k-150", 149, "windowpane", 192, "window"),
    ("bdd", 0, "road", 98, "road"),
    ("bdd", 16, "train", 181, "train"),
    ("bdd", 18, "bicycle", 175, "bicycle"),
    ("cityscapes-19", 9, "terrain", 102, "terrain"),
    ("cityscapes-19", 12, "rider", 127, "bicyclist"),
    ("cityscapes-19", 15, "bus", 180, "bus"),
    ("coco-panoptic-133", 0, "banner", 166, "banner"),
    ("coco-panoptic-133", 91, "tennis racket", 158, "tennis_racket"),
    ("coco-panoptic-133", 132, "toothbrush", 111, "toothbrush"),
    ("idd-39", 6, "person", 125, "person"),
    ("idd-39", 8, "rider", 128, "motorcyclist"),
    ("idd-39", 18, "vehicle fallback", 255, "unlabeled"),
    ("idd-39", 38, "license plate", 255, "unlabeled"),
    ("mapillary-public65", 0, "Bird", 6, "bird"),
    ("mapillary-public65", 21, "Motorcyclist", 128, "motorcyclist"),
    ("mapillary-public65", 39, "Junction Box", 134, "junction_box"),
    ("mapillary-public65", 64, "Ego Vehicle", 255, "unlabeled"),
    ("sunrgbd-37", 4, "chair", 57, "chair_other"),
    ("sunrgbd-37", 21, "ceiling", 36, "ceiling"),
    ("sunrgbd-37", 36, "bag", 2, "bag"),
    ("ade20k-150-relabeled", 25, "bridge", 32, "bridge"),
    ("ade20k-150-relabeled", 120, "teddy_bear", 109, "teddy_bear"),
    ("ade20k-150-relabeled", 140, "zebra", 14, "zebra"),
    ("bdd-relabeled", 6, "motorcycle", 178, "motorcycle"),
    ("bdd-relabeled", 10, "rider_other", 126, "rider_other"),
    ("cityscapes-19-relabeled", 15, "traffic_light", 136, "traffic_light"),
    ("cityscapes-19-relabeled", 20, "wall", 191, "wall"),
    ("cityscapes-34-relabeled", 1, "bicyclist", 127, "bicyclist"),
    ("cityscapes-34-relabeled", 16, "sky", 142, "sky"),
    ("coco-panoptic-133-relabeled", 3, "awning", 164, "awning"),
    ("coco-panoptic-133-relabeled", 23, "bookshelf", 76, "bookshelf"),
    ("coco-panoptic-133-relabeled", 154, "zebra", 14, "zebra"),
    ("idd-39-relabeled", 0, "autorickshaw", 177, "autorickshaw"),
    ("idd-39-relabeled", 12, "guard_rail", 146, "guard_rail"),
    ("mapillary-public65-relabeled", 0, "animal_other", 16, "animal_other"),
    ("mapillary-public65-relabeled", 45, "trash_can", 63, "trash_can"),
    ("sunrgbd-37-relabeled", 39, "swivel_chair", 59, "swivel_chair"),
    ("sunrgbd-37-relabeled", 47, "window_blind", 193, "window_blind"),
    ("cityscapes-34", 0, "unlabeled", 255, "unlabeled"),
    ("cityscapes-34", 1, "ego vehicle", 255, "unlabeled"),
    ("cityscapes-34", 9, "parking", 255, "unlabeled"),
    ("cityscapes-34", 15, "bridge", 32, "bridge"),
    ("cityscapes-34", 33, "bicycle", 175, "bicycle"),
]
# (test dataset, test class id, name, universal ids it receives)
TEST_SAMPLES = [
    ("camvid-11", 0, "Building", (35,)),
    ("camvid-11", 1, "Tree", (174,)),
    ("camvid-11", 10, "Bicyclist", (127, 175)),
    ("kitti-19", 6, "traffic light", (136,)),
    ("kitti-19", 18, "bicycle", (175,)),
    ("pascal-context-60", 0, "aeroplane", (179,)),
    ("pascal-context-60", 27, "flower", ()),
    ("pascal-context-60", 51, "track", (97,)),
    ("scannet-20", 4, "chair", (57, 58, 59, 60, 61)),
    ("scannet-20", 17, "toilet", (28,)),
    ("voc2012", 14, "motorbike", (178,)),
    ("voc2012", 20, "tvmonitor", (42,)),
    ("wilddash-19", 2, "building", (35,)),
    ("wilddash-19", 10, "sky", (142,)),
]
# (test dataset, test class, number of universal classes it receives)
BACKGROUND_COUNTS = [("voc2012", "background", 167), ("pascal-context-60", "background", 94)]
# (naive id, naive name): order = first appearance over ade20k-150, bdd, cityscapes-19, coco, idd, mapillary, sunrgbd
NAIVE_SAMPLES = [(0, "airplane"), (149, "windowpane"), (254, "non-drivable fallback"), (255, ""),
                 (256, "autorickshaw"), (315, "night stand")]


@pytest.fixture(scope="module")
def conv():
    return TaxonomyConverter()


@pytest.fixture(scope="module")
def naive():
    return NaiveTaxonomyConverter()


@pytest.mark.parametrize("dataset,cid,cname,uid,uname", TRAIN_SAMPLES)
def test_train_class_maps_like_mseg(conv, dataset, cid, cname, uid, uname):
    assert load_class_names(dataset)[cid] == cname
    if dataset not in conv.train_datasets:
        conv = TaxonomyConverter(train_datasets=[dataset], test_datasets=[])
    assert conv.uid2uname[uid] == uname
    label = np.full((2, 3), cid, dtype=np.uint8)
    assert (conv.transform_label(label, dataset) == uid).all()
    assert (conv.transform_label(torch.from_numpy(label).long(), dataset) == uid).all()


@pytest.mark.parametrize("dataset,tid,tname,uids", TEST_SAMPLES)
def test_test_class_receives_like_mseg(conv, dataset, tid, tname, uids):
    assert load_class_names(dataset)[tid] == tname
    row = conv.test_projection_matrix(dataset)[tid]
    assert tuple(int(u) for u in row.nonzero().flatten()) == uids


@pytest.mark.parametrize("dataset,tname,count", BACKGROUND_COUNTS)
def test_background_receives_many_universal_classes(conv, dataset, tname, count):
    tid = load_class_names(dataset).index(tname)
    assert int(conv.test_projection_matrix(dataset)[tid].sum()) == count


def test_universal_counts_and_ids(conv):
    assert conv.num_uclasses == 194
    assert conv.uid2uname[0] == "backpack" and conv.uid2uname[193] == "window_blind"
    assert conv.uid2uname[255] == "unlabeled" and conv.uname2uid["unlabeled"] == 255
    assert all(conv.uname2uid[name] == uid for uid, name in conv.uid2uname.items())
    assert conv.unsupplied_uids == []  # MSeg's 15 datasets supply every universal class


def test_naive_counts(naive):
    assert naive.num_uclasses == 316
    assert len(naive.class_names) == 316
    assert sum(1 for n in naive.class_names if n) == 315
    for uid, name in NAIVE_SAMPLES:
        assert naive.class_names[uid] == name
    # ids skip 255: the class after the 255th name is 256, and the last id is 315
    assert naive.uid2uname[255] == "unlabeled" and 255 not in [naive.uname2uid[n] for n in naive.class_names if n]
    assert max(u for u in naive.uid2uname if u != 255) == 315


def test_naive_merges_only_equal_lowercase_names(naive):
    # 'road' appears in several datasets and is one naive class; mapillary 'Bird' and ade 'bird' merge by case
    road = naive.uname2uid["road"]
    for d in ("bdd", "cityscapes-19", "idd-39"):
        assert naive.id_to_uid_maps[d][load_class_names(d).index("road")] == road
    # mapillary's 'Ego Vehicle' is its own naive class, not 255 (naive ignores the universal TSV)
    ego = load_class_names("mapillary-public65").index("Ego Vehicle")
    assert naive.class_names[naive.id_to_uid_maps["mapillary-public65"][ego]] == "ego vehicle"
    # camvid 'Pedestrian' has no naive class of that name, so its probability row is empty
    ped = load_class_names("camvid-11").index("Pedestrian")
    assert naive.test_projection_matrix("camvid-11")[ped].sum() == 0
    building = load_class_names("camvid-11").index("Building")
    assert naive.test_projection_matrix("camvid-11")[building].nonzero().flatten().tolist() == \
        [naive.uname2uid["building"]]


# ---- full parity against MSeg's data, skipped on a clean clone ------------------------------------------------

def _reference_dir() -> Path:
    env = os.environ.get("MSEG_API_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "reference" / "mseg-api-data"


REFERENCE = _reference_dir()
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "class_remapping_files" / "MSeg_master.tsv").exists(),
    reason=f"MSeg reference data not found at {REFERENCE} (set MSEG_API_DATA to run the full parity check)")


def _mseg_names(name):
    # MSeg reads names with np.genfromtxt(delimiter='\n', dtype=str)
    return [str(n) for n in np.genfromtxt(REFERENCE / "dataset_lists" / name / f"{name}_names.txt",
                                          delimiter="\n", dtype=str)]


def _mseg_master():
    with open(REFERENCE / "class_remapping_files" / "MSeg_master.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    uname2uid = {}
    for i, row in enumerate(rows):
        name = row["universal"].strip()
        uname2uid[name] = 255 if name == "unlabeled" else i
    return rows, uname2uid


def _cell_classes(cell):
    if cell == "":
        return []
    if cell.startswith("{"):
        return [c.strip() for c in cell[1:-1].split(",")]
    return [cell]


@needs_reference
def test_full_parity_with_mseg_master_tsv(conv):
    rows, uname2uid = _mseg_master()
    assert {u: n for n, u in uname2uid.items()} == conv.uid2uname
    for dataset in DEFAULT_TRAIN_DATASETS + ["cityscapes-34"]:
        names = _mseg_names(dataset)
        assert load_class_names(dataset) == names
        mseg_table = np.zeros(256, dtype=np.int64)  # MSeg's table: unmapped ids silently become 0
        mseg_table[255] = 255
        for row in rows:
            for cls in _cell_classes(row[dataset]):
                mseg_table[names.index(cls)] = uname2uid[row["universal"].strip()]
        one = conv if dataset in conv.train_datasets else TaxonomyConverter([dataset], [])
        ids = np.array(list(range(len(names))) + [255], dtype=np.uint8)
        np.testing.assert_array_equal(one.transform_label(ids, dataset), mseg_table[ids], err_msg=dataset)
    for dataset in DEFAULT_TEST_DATASETS:
        names = _mseg_names(dataset)
        assert load_class_names(dataset) == names
        weight = torch.zeros(len(names), 194)
        for row in rows:
            if row[dataset] != "":
                weight[names.index(row[dataset]), uname2uid[row["universal"].strip()]] = 1
        assert torch.equal(conv.test_projection_matrix(dataset), weight), dataset
        logits = torch.randn(2, 194, 3, 4, generator=torch.Generator().manual_seed(0))
        probs = torch.softmax(logits, dim=1)
        mseg = torch.nn.functional.conv2d(probs, weight[:, :, None, None])  # MSeg's 1x1 convolution
        exact = torch.einsum("kc,nchw->nkhw", weight.double(), probs.double())
        ours = conv.transform_predictions_test(logits, dataset)
        torch.testing.assert_close(ours, mseg, rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.double(), exact, rtol=0, atol=1e-6)


@needs_reference
def test_full_parity_naive(naive):
    uname2uid, next_id = {}, 0
    for d in UNRELABELED_TRAIN_DATASETS:
        for cls in _mseg_names(d):
            if cls.lower() in uname2uid:
                continue
            uname2uid[cls.lower()] = next_id
            next_id += 1
            if next_id == 255:
                next_id += 1
    assert len(uname2uid) + 1 == naive.num_uclasses
    assert all(naive.uname2uid[n] == u for n, u in uname2uid.items())
    for d in UNRELABELED_TRAIN_DATASETS:
        names = _mseg_names(d)
        ids = np.arange(len(names), dtype=np.uint8)
        expected = [uname2uid[c.lower()] for c in names]
        assert naive.transform_label(ids, d).tolist() == expected
    for d in DEFAULT_TEST_DATASETS:
        names = _mseg_names(d)
        weight = torch.zeros(len(names), naive.num_uclasses)
        for tid, cls in enumerate(names):
            if cls.lower() in uname2uid:
                weight[tid, uname2uid[cls.lower()]] = 1
        assert torch.equal(naive.test_projection_matrix(d), weight), d


@needs_reference
def test_every_reference_taxonomy_has_names_and_colors():
    lists = REFERENCE / "dataset_lists"
    for folder in sorted(p for p in lists.iterdir() if p.is_dir()):
        names = _mseg_names(folder.name)
        assert load_class_names(folder.name) == names, folder.name
        colors = load_class_colors(folder.name)
        assert colors.shape == (len(names), 3) and colors.dtype == np.uint8
        own = folder / f"{folder.name}_colors.txt"
        if own.exists():
            ref = np.loadtxt(own).astype(np.uint8).reshape(-1, 3)
            if len(ref) == len(names):
                np.testing.assert_array_equal(colors, ref, err_msg=folder.name)
