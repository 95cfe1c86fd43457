"""The training loader on the synthetic world: batch contract, determinism, resume, ranks, bad samples."""

import logging

import numpy as np
import pytest
import torch

from loader_helpers import assert_same, config_for, take
from mseg_semantic.config import load_config
from mseg_semantic.data import BadSampleError, build_train_loader
from mseg_semantic.data.demo_world import DEMO_TRAIN_DATASETS

TRAIN = list(DEMO_TRAIN_DATASETS)
SMALL = dict(batch_size=6, train_h=48, train_w=40, short_size=56, seed=5)


def small_cfg(world, **changes):
    """The schema's defaults with the small crops above, this world as data_root, and ``changes``."""
    return config_for(world, SMALL, **changes)


def test_batches_follow_the_contract(small_world, universal_converter):
    loader = build_train_loader(small_cfg(small_world), TRAIN, universal_converter)
    batch = take(loader, 1)[0]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (6, 3, 48, 40)
    assert batch["label"].dtype == torch.uint8 and batch["label"].shape == (6, 48, 40)  # widened on the device
    assert batch["dataset_index"].dtype == torch.int64 and sorted(batch["dataset_index"].tolist()) == [0, 0, 1, 1, 2, 2]
    for row in range(6):
        name = TRAIN[int(batch["dataset_index"][row])]
        ids = set(batch["label"][row].unique().tolist()) - {255}
        assert ids and ids <= set(universal_converter.dataset_universal_ids(name))
    assert loader.state_dict()["batch"] == 1


def test_labels_stay_in_the_dataset_taxonomy_without_a_converter(small_world):
    loader = build_train_loader(small_cfg(small_world), ["camvid-11"], None, split="val")
    labels = take(loader, 2)[1]["label"]
    assert set(labels.unique().tolist()) <= set(range(11)) | {255}


def test_resume_mid_epoch_gives_the_uninterrupted_stream_with_any_worker_count(small_world, universal_converter):
    uninterrupted = build_train_loader(small_cfg(small_world), TRAIN, universal_converter)
    iterator = iter(uninterrupted)
    for _ in range(7):  # 7 batches of 2 per dataset: past the end of the first epoch (8 images each)
        next(iterator)
    state = uninterrupted.state_dict()
    expected = [next(iterator) for _ in range(3)]

    resumed = build_train_loader(small_cfg(small_world), TRAIN, universal_converter, workers=2)
    resumed.load_state_dict(state)
    assert_same(take(resumed, 3), expected)
    assert resumed.state_dict()["batch"] == 10 == uninterrupted.state_dict()["batch"]
    assert resumed.state_dict()["draws"] == uninterrupted.state_dict()["draws"]


def test_two_ranks_see_exactly_the_rows_of_one_rank(small_world, universal_converter):
    single = take(build_train_loader(small_cfg(small_world), TRAIN, universal_converter), 3)
    halves = [take(build_train_loader(small_cfg(small_world), TRAIN, universal_converter, rank=r, world_size=2), 3)
              for r in range(2)]
    joined = [{k: torch.cat([halves[0][b][k], halves[1][b][k]]) for k in single[b]} for b in range(3)]
    assert_same(joined, single)


def test_dataset_gpu_mapping_gives_each_rank_its_dataset(small_world, universal_converter):
    mapping = {name: [rank] for rank, name in enumerate(TRAIN)}
    for rank in range(3):
        loader = build_train_loader(small_cfg(small_world), TRAIN, universal_converter, rank=rank, world_size=3,
                                    dataset_gpu_mapping=mapping)
        for batch in take(loader, 2):
            assert batch["dataset_index"].tolist() == [rank, rank]
    with pytest.raises(ValueError, match=r"uses 3 GPUs .* world_size is 1"):
        build_train_loader(small_cfg(small_world), TRAIN, universal_converter, dataset_gpu_mapping=mapping)


def test_a_state_from_another_stream_is_refused_and_stale_iterators_stop(small_world, universal_converter):
    loader = build_train_loader(small_cfg(small_world), TRAIN, universal_converter)
    other = build_train_loader(small_cfg(small_world, seed=6), TRAIN, universal_converter)
    with pytest.raises(ValueError, match="seed: saved 6, now 5"):
        loader.load_state_dict(other.state_dict())
    iterator = iter(loader)
    next(iterator)
    loader.load_state_dict(loader.state_dict())
    with pytest.raises(RuntimeError, match="stale"):
        next(iterator)


def _break_files(world):
    """Missing image for line 0, corrupt label for line 1 of cityscapes-19 train."""
    list_file = world / "dataset_lists/cityscapes-19/list/train.txt"
    lines = list_file.read_text().split("\n")
    root = world / "Cityscapes"
    missing = root / lines[0].split()[0]
    corrupt = root / lines[1].split()[1]
    missing.unlink()
    corrupt.write_bytes(b"not a png")
    return missing, corrupt


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_file_is_an_error_naming_it(writable_world, universal_converter, workers):
    missing, corrupt = _break_files(writable_world)
    loader = build_train_loader(small_cfg(writable_world), ["cityscapes-19"], universal_converter, workers=workers)
    with pytest.raises(BadSampleError) as info:  # the type survives the trip from a loader worker
        take(loader, 4)  # 24 draws from 8 images: both bad files come up
    assert str(missing) in str(info.value) or str(corrupt) in str(info.value)


def test_skipped_bad_files_are_replaced_deterministically_and_counted(writable_world, universal_converter, caplog):
    missing, corrupt = _break_files(writable_world)
    cfg = small_cfg(writable_world, on_bad_sample="skip")
    loader = build_train_loader(cfg, ["cityscapes-19"], universal_converter)
    with caplog.at_level(logging.WARNING, logger="mseg_semantic.data.loader"):
        first = take(loader, 4)
    skipped = loader.skipped_counts()["cityscapes-19"]
    # 24 draws = 3 passes over 8 images: each bad file is drawn 3 times, and a random replacement may be bad too
    assert skipped >= 6
    assert len([r for r in caplog.records if "skipped bad sample" in r.getMessage()]) == skipped
    assert str(missing) in caplog.text and str(corrupt) in caplog.text
    assert loader.state_dict()["skipped"] == {"cityscapes-19": skipped}
    again = build_train_loader(cfg, ["cityscapes-19"], universal_converter, workers=2)
    assert_same(take(again, 4), first)
    assert again.skipped_counts() == {"cityscapes-19": skipped}


def test_label_ids_outside_the_taxonomy(writable_world, universal_converter):
    import cv2

    list_file = writable_world / "dataset_lists/cityscapes-19/list/train.txt"
    label_paths = [writable_world / "Cityscapes" / line.split()[1] for line in list_file.read_text().splitlines()]
    for path in label_paths:
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        label[label == 0] = 40  # cityscapes-19 has ids 0..18: 40 is nobody's
        cv2.imwrite(str(path), label)
    strict = build_train_loader(small_cfg(writable_world), ["cityscapes-19"], universal_converter)
    with pytest.raises(BadSampleError, match=r"outside the cityscapes-19 taxonomy"):
        take(strict, 2)
    lenient = build_train_loader(small_cfg(writable_world, unknown_label="ignore"), ["cityscapes-19"], universal_converter)
    labels = torch.cat([b["label"] for b in take(lenient, 2)])
    road = universal_converter.transform_label(np.zeros((1, 1), np.uint8), "cityscapes-19")[0, 0]
    assert road not in labels.unique().tolist()  # the former road pixels became 255


def test_loader_settings_come_from_the_config_sections(small_world, universal_converter):
    cfg = load_config(None, [f"data_root={small_world}", "batch_size=3", "train_h=32", "train_w=32", "short_size=40",
                             "workers=4", "DATA.sampling_weights={cityscapes-19: 1, ade20k-150: 0, mapillary-public65: 0}"])
    loader = build_train_loader(cfg, TRAIN, universal_converter)
    # TRAIN.workers counts per node: the per-process count is the caller's (0 unless given)
    assert loader.workers == 0
    batch = take(loader, 1)[0]
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["dataset_index"].tolist() == [0, 0, 0]
