"""The synthetic demo world: on-disk format, idempotence, and consistency with MSeg's taxonomy."""

import json
import os

import numpy as np

from mseg_semantic.data import ValDataset, read_list_file
from mseg_semantic.taxonomy import Catalog
from mseg_semantic.data.demo_world import (
    DEMO_RELABELED_DATASETS,
    DEMO_TEST_DATASETS,
    DEMO_TRAIN_DATASETS,
    MARKER,
    WORLD_CLASSES,
    dataset_label_table,
    generate,
    render_sample,
    render_world,
)
from mseg_semantic.taxonomy import TaxonomyConverter, load_class_names


def test_world_layout_matches_the_catalog(small_world):
    assert "SYNTHETIC" in (small_world / "README.txt").read_text()
    marker = json.loads((small_world / MARKER).read_text())
    assert marker["seed"] == 0 and marker["counts"]["camvid-11"] == {"val": 3, "test": 2}
    for name in DEMO_TRAIN_DATASETS + DEMO_RELABELED_DATASETS:
        for split, n in (("train", 8), ("val", 3)):
            pairs = read_list_file(Catalog(data_root=small_world).locate(name, split))
            assert len(pairs) == n
            assert all(image.suffix == ".jpg" and image.is_file() and label.suffix == ".png" for image, label in pairs)
    # a relabeled version shows the same images with its own labels
    plain = read_list_file(Catalog(data_root=small_world).locate("ade20k-150", "val"))
    relabeled = read_list_file(Catalog(data_root=small_world).locate("ade20k-150-relabeled", "val"))
    assert [i for i, _ in plain] == [i for i, _ in relabeled] and all(a != b for (_, a), (_, b) in zip(plain, relabeled))
    assert not Catalog(data_root=small_world).locate("camvid-11", "train").list_file.exists()  # held out: no training split


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
    for name in (*DEMO_TRAIN_DATASETS, *DEMO_RELABELED_DATASETS, *DEMO_TEST_DATASETS):
        split = "val"
        dataset = ValDataset(Catalog(data_root=small_world), name, split)
        num_classes = len(load_class_names(name))
        for i in range(len(dataset)):
            ids = set(np.unique(dataset[i]["label"]).tolist())
            assert ids <= set(range(num_classes)) | {255}
    camvid = dataset_label_table("camvid-11")
    assert camvid[WORLD_CLASSES.index("terrain")] == 255  # CamVid-11 has no class for grass


def universal_of(converter, dataset: str, world_name: str, sets: bool = False):
    """The universal class (or label set, as names) a dataset gives one world class; None where it is unlabeled."""
    source = int(dataset_label_table(dataset)[WORLD_CLASSES.index(world_name)])
    if source == 255:
        return None
    members = converter.class_sets[dataset][source]
    names = [converter.class_names[u] for u in members]
    return (set(names) if names else None) if sets else (names[0] if names else None)


def test_relabeled_datasets_agree_and_every_label_set_holds_the_truth():
    """The relabeled versions give one world class one universal class everywhere (the fine truth), and camvid-11's
    class of it receives that class. The unrelabeled datasets disagree, as MSeg's do (riders, guard rails), but
    each one's label set, authored from MSeg's relabeling records, holds the fine truth: exactly what
    partial-label training needs."""
    relabeled = TaxonomyConverter(list(DEMO_RELABELED_DATASETS), list(DEMO_TEST_DATASETS))
    plain = TaxonomyConverter(list(DEMO_TRAIN_DATASETS), [])
    projection = relabeled.test_projection_matrix("camvid-11")
    camvid = dataset_label_table("camvid-11")
    conflicts = set()
    for world_id, world_name in enumerate(WORLD_CLASSES):
        truth = {universal_of(relabeled, d, world_name) for d in DEMO_RELABELED_DATASETS} - {None}
        assert len(truth) == 1, (world_name, truth)
        (fine,) = truth
        if camvid[world_id] != 255:
            assert projection[camvid[world_id], relabeled.name_to_id[fine]] == 1, world_name
        for dataset in DEMO_TRAIN_DATASETS:
            label_set = universal_of(plain, dataset, world_name, sets=True)
            if label_set is None:
                continue
            assert fine in label_set, (dataset, world_name, label_set)
            if universal_of(plain, dataset, world_name) != fine:
                conflicts.add((dataset, world_name))
    assert conflicts == {("cityscapes-19", "motorcyclist"), ("ade20k-150", "bicyclist"), ("ade20k-150", "motorcyclist"),
                         ("ade20k-150", "guard_rail")}
    # what one-hot training of the unrelabeled datasets is told: ADE's signboard is unlabeled in the universal taxonomy
    assert universal_of(plain, "ade20k-150", "traffic_sign") is None


def test_every_world_class_appears_and_images_look_like_their_class(small_world):
    image, label = render_sample("mapillary-public65", 0, "train", 3)
    names = load_class_names("mapillary-public65")
    sky, road = label == names.index("Sky"), label == names.index("Road")
    assert sky.mean() > 0.1 and road.mean() > 0.1
    assert image[sky][:, 2].mean() > image[road][:, 2].mean() + 60  # blue sky, grey road
    seen, world = set(), set()
    for index in range(8):
        _, label = render_sample("cityscapes-19", 0, "train", index)
        seen |= set(np.unique(label).tolist())
        world |= set(np.unique(render_world("cityscapes-19", 0, "train", index)[1]).tolist())
    assert world == set(range(len(WORLD_CLASSES)))  # every world class is drawn
    # cityscapes merges lane markings and crossings into road, curbs into sidewalk, both riders into rider, and
    # leaves guard rails unlabeled
    assert len(seen - {255}) == len(WORLD_CLASSES) - 5 and 255 in seen
