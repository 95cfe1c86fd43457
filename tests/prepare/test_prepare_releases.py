"""The datasets as they are downloaded today (issue 13 items 1-3), from tiny archives in the real layouts:
BDD's 10K images + sem_seg masks, Mapillary Vistas v1.2 and the v2.0 package, the 2021 full ADE20K release.
Each goes download (placed by hand) -> extract -> remap -> relabel, checked file by file and pixel by pixel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mseg_semantic.prepare.download import download_dataset
from mseg_semantic.prepare.extract import extract_dataset
from mseg_semantic.prepare.relabel import RelabelInputError, relabel_dataset
from mseg_semantic.prepare.remap import remap_dataset
from mseg_semantic.prepare.specs import SPECS, get_spec, release_in_use
from mseg_semantic.prepare.tables import load_table
from mseg_semantic.prepare.verify import verify_dataset
from mseg_semantic.tool.prepare import main

from prepare_helpers import class_id, jpg_bytes, png_bytes, read_png, zip_bytes
from test_prepare_relabel import write_records

BDD_ID = "0a0a0b1a-7c39d841"


def place(root, top, name, data):
    (root / top).mkdir(parents=True, exist_ok=True)
    (root / top / name).write_bytes(data)


def steps_up_to_remap(key, root, download=True, **remap_kw):
    if download:  # the archives were placed by hand: this checks and records them
        download_dataset(get_spec(key), root, progress=False)
    extract_dataset(get_spec(key), root, progress=False)
    return remap_dataset(key, root, workers=1, progress=False, **remap_kw)


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------- BDD
def bdd_2021_archives(root):
    person, road = class_id("bdd", "person"), class_id("bdd", "road")
    mask = np.array([[person, road, person], [road, road, 255]], np.uint8)  # mode L, ids 0..18 and 255
    colormap = np.zeros((2, 3, 3), np.uint8)
    images = {f"bdd100k/images/10k/{split}/{BDD_ID}-{split}.jpg": jpg_bytes(2, 3) for split in ("train", "val", "test")}
    labels = {}
    for split in ("train", "val"):
        labels[f"bdd100k/labels/sem_seg/masks/{split}/{BDD_ID}-{split}.png"] = png_bytes(mask)
        labels[f"bdd100k/labels/sem_seg/colormaps/{split}/{BDD_ID}-{split}.png"] = png_bytes(colormap)
        labels[f"bdd100k/labels/sem_seg/polygons/sem_seg_{split}.json"] = b"[]"
        labels[f"bdd100k/labels/sem_seg/rles/sem_seg_{split}.json"] = b"[]"
    place(root, "BDD", "bdd100k_images_10k.zip", zip_bytes(images))
    place(root, "BDD", "bdd100k_sem_seg_labels_trainval.zip", zip_bytes(labels))
    return person, road


def test_bdd_todays_download_extracts_remaps_relabels_and_verifies(tmp_path, monkeypatch):
    person, road = bdd_2021_archives(tmp_path)
    assert release_in_use(get_spec("bdd"), tmp_path).name.startswith("2021")
    report = steps_up_to_remap("bdd", tmp_path)
    base = tmp_path / "BDD/bdd100k"
    # only what the chain needs is kept: train/val images and the id masks
    assert files_under(base) == [f"images/10k/train/{BDD_ID}-train.jpg", f"images/10k/val/{BDD_ID}-val.jpg",
                                 f"labels/sem_seg/masks/train/{BDD_ID}-train.png", f"labels/sem_seg/masks/val/{BDD_ID}-val.png"]
    assert report["listed"] == {"train": 1, "val": 1} and report["checked"] == 2
    assert (tmp_path / "dataset_lists/bdd/list/val.txt").read_text() == \
        f"images/10k/val/{BDD_ID}-val.jpg labels/sem_seg/masks/val/{BDD_ID}-val.png\n"
    records = write_records(tmp_path / "rec", [("bdd", "train", "person", "bicyclist", [f"{BDD_ID}-train_{person}.jpg"])])
    relabel_dataset("bdd", tmp_path, workers=1, records_dir=records, progress=False)
    rel = "bdd-relabeled"
    out = read_png(base / f"labels/sem_seg_relabeled/masks/train/{BDD_ID}-train.png")
    bicyclist, road_r = class_id(rel, "bicyclist"), class_id(rel, "road")
    assert out.tolist() == [[bicyclist, road_r, bicyclist], [road_r, road_r, 255]]
    monkeypatch.setitem(SPECS, "bdd", dataclasses.replace(SPECS["bdd"], splits={"train": 1, "val": 1}))
    assert verify_dataset("bdd", tmp_path, workers=1, progress=False).ok


def test_bdd_2018_archive_still_works(tmp_path):
    labels = {f"bdd100k/seg/labels/{s}/{BDD_ID}_train_id.png": png_bytes(np.array([[0, 18]], np.uint8)) for s in ("train", "val")}
    images = {f"bdd100k/seg/images/{s}/{BDD_ID}.jpg": jpg_bytes(1, 2) for s in ("train", "val", "test")}
    place(tmp_path, "BDD", "bdd100k_seg.zip", zip_bytes({**labels, **images}))
    assert steps_up_to_remap("bdd", tmp_path)["listed"] == {"train": 1, "val": 1}
    assert (tmp_path / "dataset_lists/bdd/list/train.txt").read_text() == \
        f"seg/images/train/{BDD_ID}.jpg seg/labels/train/{BDD_ID}_train_id.png\n"


# ---------------------------------------------------------------------------------------------- Mapillary
def mapillary_files(version_dir: str):
    """Labels (palette PNG), instances (16-bit PNG) and images of one image per split, in a package's layout."""
    palette = load_table("mapillary-public66", "mapillary-public65").colors.flatten().tolist()
    palette += [0] * (768 - len(palette))
    labels = np.array([[1, 1, 13]], np.uint8)  # Ground Animal, Ground Animal, Road
    instances = np.array([[256, 257, 13 * 256]], np.uint16)  # two animal instances, one road
    files = {}
    for folder in ("training", "validation"):
        files[f"{folder}/images/img_{folder}.jpg"] = jpg_bytes(1, 3)
        files[f"{folder}/{version_dir}labels/img_{folder}.png"] = png_bytes(labels, mode="P", palette=palette)
        files[f"{folder}/{version_dir}instances/img_{folder}.png"] = png_bytes(instances)
        files[f"{folder}/{version_dir}panoptic/img_{folder}.png"] = png_bytes(np.zeros((1, 3, 3), np.uint8))
    files["testing/images/img_test.jpg"] = jpg_bytes(1, 3)
    return files


@pytest.mark.parametrize("package", ["v1.2", "v2.0"])
def test_mapillary_v12_and_the_v20_package_use_the_v12_labels(tmp_path, package):
    files = mapillary_files("" if package == "v1.2" else "v1.2/")
    if package == "v2.0":  # the v2.0 package also carries its own 124-class annotations, which are not kept
        for folder in ("training", "validation"):
            files[f"{folder}/v2.0/labels/img_{folder}.png"] = png_bytes(np.full((1, 3), 99, np.uint8))
            files[f"{folder}/v2.0/polygons/img_{folder}.json"] = b"{}"
        files["config_v2.0.json"] = b"{}"
    files[f"config_{'v1.2' if package == 'v1.2' else 'v1.2'}.json"] = b"{}"
    place(tmp_path, "MapillaryVistasPublic", f"mapillary-vistas-dataset_public_{package}.zip", zip_bytes(files))
    assert release_in_use(get_spec("mapillary"), tmp_path).name == package
    report = steps_up_to_remap("mapillary", tmp_path)
    base = tmp_path / "MapillaryVistasPublic"
    assert not (base / "testing").exists() and not list(base.rglob("v2.0"))
    assert report["listed"] == {"train": 1, "val": 1}
    t = "mapillary-public65"
    assert read_png(base / "training_semseg65/labels/img_training.png").tolist() == [
        [class_id(t, "Ground Animal"), class_id(t, "Ground Animal"), class_id(t, "Road")]]
    records = write_records(tmp_path / "rec", [("mapillary-public65", "train", "dog", "cat", ["mapillary_img_training_257.jpg"])])
    relabel_dataset("mapillary", tmp_path, workers=1, records_dir=records, progress=False)
    rel = "mapillary-public65-relabeled"
    assert read_png(base / "training_semseg65_relabeled/labels/img_training.png").tolist() == [
        [class_id(rel, "dog"), class_id(rel, "cat"), class_id(rel, "road")]]


def test_list_shows_the_release_in_use(tmp_path, capsys):
    place(tmp_path, "MapillaryVistasPublic", "mapillary-vistas-dataset_public_v2.0.zip", b"")
    assert main(["list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "release v2.0 (in use)" in out and "release v1.2:" in out and "release 2021 (10K images" in out


# ---------------------------------------------------------------------------------------------- ADE20K
def ade20k_challenge(root):
    base = root / "ADE20K/ADEChallengeData2016"
    fence, wall = class_id("ade20k-151", "fence"), class_id("ade20k-151", "wall")
    label = np.full((4, 6), wall, np.uint8)
    label[:, 0:3] = fence
    files = {}
    for split, sub in (("train", "training"), ("val", "validation")):
        files[f"ADEChallengeData2016/annotations/{sub}/ADE_{split}_00000001.png"] = png_bytes(label)
        files[f"ADEChallengeData2016/images/{sub}/ADE_{split}_00000001.jpg"] = jpg_bytes(4, 6)
    place(root, "ADE20K", "ADEChallengeData2016.zip", zip_bytes(files))
    return base


def ade20k_seg_png():
    """A full release's *_seg.png at twice the challenge size: class in R/G, instance id in B."""
    seg = np.zeros((8, 12, 3), np.uint8)
    seg[:, 0:8, 2] = 70  # instance 70 covers four challenge columns: three of fence, one of wall
    seg[:, 8:12, 2] = 3
    return png_bytes(seg)


def test_the_2021_full_ade20k_release_serves_checked_relabeling_and_is_refused_for_mseg_mode(tmp_path, capsys):
    base = ade20k_challenge(tmp_path)
    prefix = "ADE20K_2021_17_01/images/ADE/training/urban/street/"
    place(tmp_path, "ADE20K", "ADE20K_2021_17_01.zip", zip_bytes({
        prefix + "ADE_train_00000001.jpg": jpg_bytes(8, 12), prefix + "ADE_train_00000001_seg.png": ade20k_seg_png(),
        prefix + "ADE_train_00000001_parts_1.png": png_bytes(np.zeros((8, 12, 3), np.uint8)),
        prefix + "ADE_train_00000001.json": b"{}",
        prefix + "ADE_train_00000001/instance_000_ADE_train_00000001.png": png_bytes(np.zeros((8, 12), np.uint8)),
        "ADE20K_2021_17_01/index_ade20k.pkl": b"\x80\x04N.", "ADE20K_2021_17_01/objects.txt": b""}))
    steps_up_to_remap("ade20k", tmp_path, download=False)  # a tiny ADEChallengeData2016.zip is not the published one
    assert files_under(tmp_path / "ADE20K/ADE20K_2021_17_01") == ["images/ADE/training/urban/street/ADE_train_00000001_seg.png"]
    records = write_records(tmp_path / "rec", [("ade20k-v1", "train", "fence", "guard_rail", ["ADE_train_00000001_70.png"])])
    report = relabel_dataset("ade20k", tmp_path, workers=1, records_dir=records, progress=False)
    assert report["instance_release"] == "ADE20K_2021_17_01"
    rel = "ade20k-150-relabeled"
    guard, wall = class_id(rel, "guard_rail"), class_id(rel, "wall")
    out = read_png(base / "annotations_semseg150_relabeled/training/ADE_train_00000001.png")
    assert out[0].tolist() == [guard, guard, guard, wall, wall, wall]  # checked: the wall column of instance 70 stays
    with pytest.raises(RelabelInputError, match="ADE20K_2016_07_26.zip"):
        relabel_dataset("ade20k", tmp_path, workers=1, records_dir=records, progress=False, mode="mseg")
    capsys.readouterr()
    assert main(["relabel", "ade20k", "--root", str(tmp_path), "--records", str(records), "--mode", "mseg",
                 "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only ADE20K_2021_17_01 is here" in err
