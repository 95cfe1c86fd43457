"""The synthetic demo world: on-disk format, idempotence, and consistency with MSeg's taxonomy."""

import json
import os

import numpy as np

from mseg_semantic.data import ValDataset, locate, read_list_file
from mseg_semantic.data.demo_world import (
    DEMO_TEST_DATASETS,
    DEMO_TRAIN_DATASETS,
    MARKER,
    WORLD_CLASSES,
    dataset_label_table,
    generate,
    render_sample,
)
from mseg_semantic.taxonomy import load_class_names


def test_world_layout_matches_the_catalog(small_world):
    assert "SYNTHETIC" in (small_world / "README.txt").read_text()
    marker = json.loads((small_world / MARKER).read_text())
    assert marker["seed"] == 0 and marker["counts"]["camvid-11"] == {"val": 3, "test": 2}
    for name in DEMO_TRAIN_DATASETS:
        for split, n in (("train", 8), ("val", 3)):
            pairs = read_list_file(locate(name, split, small_world))
            assert len(pairs) == n
            assert all(image.suffix == ".jpg" and image.is_file() and label.suffix == ".png" for image, label in pairs)
    assert not locate("camvid-11", "train", small_world).list_file.exists()  # held out: no training split


def test_generation_is_idempotent_and_seeded(tmp_path):
    counts, heldout = {"train": 2, "val": 1}, {"val": 1}
    assert generate(tmp_path, seed=3, counts=counts, heldout_counts=heldout).generated
    image_file = tmp_path / "Camvid/synthetic/images/val/000000.jpg"
    first = image_file.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert image_file.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable, not mkstemp's 0600
    assert not generate(tmp_path, seed=3, counts=counts, heldout_counts=heldout).generated
    assert generate(tmp_path, seed=4, counts=counts, heldout_counts=heldout).generated
    assert (tmp_path / "Camvid/synthetic/images/val/000000.jpg").read_bytes() != first
    assert json.loads((tmp_path / MARKER).read_text())["seed"] == 4
    a_image, a_label = render_sample("cityscapes-19", 7, "train", 1)
    b_image, b_label = render_sample("cityscapes-19", 7, "train", 1)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_label, b_label)


def test_each_dataset_labels_only_what_its_taxonomy_expresses(small_world):
    for name in (*DEMO_TRAIN_DATASETS, *DEMO_TEST_DATASETS):
        split = "val"
        dataset = ValDataset(name, split, data_root=small_world)
        num_classes = len(load_class_names(name))
        for i in range(len(dataset)):
            ids = set(np.unique(dataset[i]["label"]).tolist())
            assert ids <= set(range(num_classes)) | {255}
    camvid = dataset_label_table("camvid-11")
    assert camvid[WORLD_CLASSES.index("terrain")] == 255  # CamVid-11 has no class for grass


def test_one_world_class_is_one_universal_class_in_every_dataset(universal_converter):
    """What makes universal training work: the same object maps to the same universal id everywhere, and the
    held-out camvid-11 class of it receives that universal class."""
    tables = {name: dataset_label_table(name) for name in DEMO_TRAIN_DATASETS}
    projection = universal_converter.test_projection_matrix("camvid-11")
    camvid = dataset_label_table("camvid-11")
    for world_id, world_name in enumerate(WORLD_CLASSES):
        universal = {name: int(universal_converter.transform_label(tables[name][[world_id]].reshape(1, 1), name)[0, 0])
                     for name in DEMO_TRAIN_DATASETS}
        if world_name == "traffic_sign":
            assert universal.pop("ade20k-150") == 255  # ADE's 'signboard' is unlabeled in MSeg's universal taxonomy
        assert len(set(universal.values())) == 1, (world_name, universal)
        uid = universal["cityscapes-19"]
        assert uid != 255
        if camvid[world_id] != 255:
            assert projection[camvid[world_id], uid] == 1, world_name


def test_every_world_class_appears_and_images_look_like_their_class(small_world):
    image, label = render_sample("mapillary-public65", 0, "train", 3)
    names = load_class_names("mapillary-public65")
    sky, road = label == names.index("Sky"), label == names.index("Road")
    assert sky.mean() > 0.1 and road.mean() > 0.1
    assert image[sky][:, 2].mean() > image[road][:, 2].mean() + 60  # blue sky, grey road
    seen = set()
    for index in range(8):
        _, label = render_sample("cityscapes-19", 0, "train", index)
        seen |= set(np.unique(label).tolist())
    # all 14 world classes are drawn; cityscapes merges lane markings into road and curbs into sidewalk
    assert len(seen - {255}) == 12
