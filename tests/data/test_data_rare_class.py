"""Rare-class sampling (DATA.rare_class_sampling) on the synthetic world: the temperature formula, the crops, the
cache, label sets, and the loader's promises (batch b a function of (seed, b), exact resume, any world size)."""

import shutil

import numpy as np
import pytest
import torch

from loader_helpers import assert_same, config_for, take
from mseg_semantic.data import build_train_loader, read_label
from mseg_semantic.data import rare_class
from mseg_semantic.data.demo_world import DEMO_TRAIN_DATASETS
from mseg_semantic.data.sampler import SampleRef
from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import build_taxonomy_converter

TRAIN = list(DEMO_TRAIN_DATASETS)
RCS = dict(batch_size=6, train_h=40, train_w=40, short_size=64, seed=3, rare_class_sampling=True, rare_class_min_pixels=8)


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_world):
    """A private copy of the small world: these tests write class statistics beside its lists."""
    copy = tmp_path_factory.mktemp("rcs") / "world"
    shutil.copytree(small_world, copy)
    return copy


@pytest.fixture(scope="module")
def set_valued_converter():
    return build_taxonomy_converter("universal", TRAIN, [], set_valued=True)


def rcs_cfg(world, **changes):
    return config_for(world, RCS, **changes)


def label_files(world, dataset):
    location = _location(world, dataset)
    return [location.root / line.split()[1] for line in location.list_file.read_text().splitlines() if line.strip()]


def test_class_choice_follows_the_temperature_formula(world, universal_converter):
    loader = build_train_loader(rcs_cfg(world, rare_class_temperature=0.02), TRAIN, universal_converter)
    plan = loader.sampler.rare_classes
    # the frequencies, counted here from the label files through the one-hot tables: sum_d w_d share of c in d
    expected = np.zeros(universal_converter.num_classes)
    for name in TRAIN:
        table = rare_class.one_hot_table(universal_converter, name)
        counts = np.zeros(universal_converter.num_classes)
        for path in label_files(world, name):
            ids, n = np.unique(read_label(path), return_counts=True)
            keep = table[ids] != rare_class.NOT_COUNTED
            np.add.at(counts, table[ids[keep]], n[keep])
        expected += counts / counts.sum() / 3
    np.testing.assert_allclose(plan.frequencies, expected, rtol=1e-12)

    dataset = TRAIN.index("mapillary-public65")
    choices = plan.choices[dataset]
    formula = np.exp((1 - expected[choices.classes]) / 0.02)
    np.testing.assert_allclose(choices.probabilities, formula / formula.sum(), rtol=1e-9)
    draws = 20000
    picked = np.array([plan.choose(3, position, dataset)[0] for position in range(draws)])
    observed = np.array([(picked == c).mean() for c in choices.classes])
    # binomial standard error <= 0.0036 at 20000 draws: 5 sigma
    assert np.abs(observed - choices.probabilities).max() < 0.018
    assert choices.probabilities.max() > 2 * choices.probabilities.min()  # the formula does favour some classes


def test_a_drawn_image_holds_its_class_and_the_crop_holds_a_pixel_of_it(world, universal_converter):
    loader = build_train_loader(rcs_cfg(world), TRAIN, universal_converter)
    plan, reader = loader.sampler.rare_classes, loader.reader
    held = plain = 0
    rows = 240
    for position in range(rows):
        dataset = position % 3
        model_class, index = plan.choose(3, position, dataset)
        table = rare_class.one_hot_table(universal_converter, TRAIN[dataset])
        source = read_label(reader.samples[dataset][index][1])
        assert (table[source] == model_class).sum() >= RCS["rare_class_min_pixels"]
        held += bool((reader.load(dataset, index, position, model_class)[1] == model_class).any())
        plain += bool((reader.load(dataset, index, position)[1] == model_class).any())  # the same crop, unbiased
    # a candidate pixel is checked to survive the warp, so only an image where no candidate fits would miss
    assert held / rows >= 0.98, held
    assert plain < held - 20, (plain, held)  # the bias is what puts the class in the crop


def test_crop_offset_holds_the_pixel_at_any_scale_rotation_and_flip():
    from mseg_semantic.data.transforms import AugmentConfig, augment_crop, sample_augment_params

    cfg = AugmentConfig(32, 48, 64, 0.5, 2.0, -10.0, 10.0, 1.0, 0.0, 0.5)
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        label = np.zeros((h, w), np.uint8)
        y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
        label[y : y + 3, x : x + 3] = 7  # a 3 x 3 speck
        params = sample_augment_params(rng, h, w, cfg)
        moved = rare_class.crop_holding_class(label, np.array([7], np.uint8), params, cfg, rng)
        if moved is params:
            continue  # no candidate could be held (rotated off the canvas)
        _, crop = augment_crop(np.zeros((h, w, 3), np.uint8), label, moved, cfg)
        assert (crop == 7).any(), (trial, h, w, moved)


def test_resume_and_worker_count_give_the_uninterrupted_stream(world, universal_converter):
    uninterrupted = build_train_loader(rcs_cfg(world), TRAIN, universal_converter)
    iterator = iter(uninterrupted)
    for _ in range(5):
        next(iterator)
    state = uninterrupted.state_dict()
    expected = [next(iterator) for _ in range(3)]
    resumed = build_train_loader(rcs_cfg(world), TRAIN, universal_converter, workers=2)
    resumed.load_state_dict(state)
    assert_same(take(resumed, 3), expected)
    # RCS changed the stream: the same seed without it gives other batches
    plain = build_train_loader(rcs_cfg(world, rare_class_sampling=False), TRAIN, universal_converter)
    plain_batches = take(plain, 8)[5:]
    assert any(not torch.equal(a["label"], b["label"]) for a, b in zip(plain_batches, expected))
    with pytest.raises(UserError, match="rare_class_sampling: saved"):
        plain.load_state_dict(state)  # a resume cannot switch RCS off (nor on) silently
    with pytest.raises(UserError, match="rare_class_sampling: saved None"):
        resumed.load_state_dict(plain.state_dict())
    # the same data under another path (another machine): its own statistics, the same stream
    moved = world.parent / "moved"
    shutil.copytree(world, moved)
    elsewhere = build_train_loader(rcs_cfg(moved), TRAIN, universal_converter)
    elsewhere.load_state_dict(state)
    assert_same(take(elsewhere, 3), expected)


def test_two_ranks_see_the_global_batches_of_one_rank(world, universal_converter):
    single = take(build_train_loader(rcs_cfg(world), TRAIN, universal_converter), 3)
    halves = [take(build_train_loader(rcs_cfg(world), TRAIN, universal_converter, rank=r, world_size=2, workers=r), 3)
              for r in range(2)]
    joined = [{k: torch.cat([halves[0][b][k], halves[1][b][k]]) for k in single[b]} for b in range(3)]
    assert_same(joined, single)


def test_dataset_gpu_mapping_keeps_each_rank_on_its_dataset(world, universal_converter):
    mapping = {name: [rank] for rank, name in enumerate(TRAIN)}
    guard_rail = universal_converter.name_to_id["guard_rail"]
    seen = set()
    for rank in range(3):
        loader = build_train_loader(rcs_cfg(world), TRAIN, universal_converter, rank=rank, world_size=3, dataset_gpu_mapping=mapping)
        refs, _ = loader.sampler.batch_refs(loader.sampler.start())
        assert {ref.dataset for ref in refs[2 * rank : 2 * rank + 2]} == {rank}
        for batch in take(loader, 4):
            assert batch["dataset_index"].tolist() == [rank, rank]
            seen |= set(batch["label"].unique().tolist())
    assert guard_rail in seen  # only Mapillary labels guard rails, and RCS shows them within 4 batches of its rank


def test_statistics_are_cached_once_reused_and_invalidated(world, universal_converter, monkeypatch, tmp_path):
    name = "mapillary-public65"
    list_dir = world / f"dataset_lists/{name}/list"
    build_train_loader(rcs_cfg(world), [name], universal_converter)
    cached = sorted(list_dir.glob("train.txt.classstats-*.npz"))
    assert len(cached) == 1
    written = cached[0].stat().st_mtime_ns

    def no_counting(*args, **kwargs):
        raise AssertionError("the labels were counted again")

    monkeypatch.setattr(rare_class, "_count_image", no_counting)
    reused = build_train_loader(rcs_cfg(world), [name], universal_converter)  # also with other RCS settings:
    build_train_loader(rcs_cfg(world, rare_class_temperature=0.5, rare_class_min_pixels=50), [name], universal_converter)
    assert cached[0].stat().st_mtime_ns == written
    # the same one-hot mapping (a set-valued converter counts a set for its one-hot target): the same statistics
    sets = build_train_loader(rcs_cfg(world), [name], build_taxonomy_converter("universal", [name], [], set_valued=True))
    np.testing.assert_array_equal(sets.sampler.rare_classes.frequencies, reused.sampler.rare_classes.frequencies)
    # another label mapping (the naive taxonomy), another list, or a changed label file: counted again
    monkeypatch.undo()
    counted = []
    original = rare_class._count_image
    monkeypatch.setattr(rare_class, "_count_image", lambda *a: counted.append(a[0]) or original(*a))
    build_train_loader(rcs_cfg(world), [name], build_taxonomy_converter("naive", [name], []))
    assert len(counted) == 8 and len(list(list_dir.glob("train.txt.classstats-*.npz"))) == 2
    list_file = list_dir / "train.txt"
    lines = list_file.read_text().splitlines(keepends=True)
    list_file.write_text("".join(lines[:-1]))
    try:
        counted.clear()
        build_train_loader(rcs_cfg(world), [name], universal_converter)
        assert len(counted) == 7
    finally:
        list_file.write_text("".join(lines))
    label = label_files(world, name)[0]
    original_bytes = label.read_bytes()
    label.write_bytes(original_bytes + b"\0" * 16)  # trailing bytes after IEND: another size, the same image
    try:
        counted.clear()
        build_train_loader(rcs_cfg(world), [name], universal_converter)
        assert len(counted) == 8
    finally:
        label.write_bytes(original_bytes)
    # a read-only list folder: the statistics go to the user's cache folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_write = rare_class.atomic_write_bytes

    def read_only_data(path, data):
        if str(path).startswith(str(world)):
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(rare_class, "atomic_write_bytes", read_only_data)
    for path in list_dir.glob("train.txt.classstats-*.npz"):
        path.unlink()
    counted.clear()
    build_train_loader(rcs_cfg(world), [name], universal_converter)
    assert len(counted) == 8 and not list(list_dir.glob("train.txt.classstats-*.npz"))
    counted.clear()
    build_train_loader(rcs_cfg(world), [name], universal_converter)  # found in the cache folder
    assert not counted
    assert len(list((tmp_path / "cache" / "mseg_semantic" / "classstats").glob(f"{name}-train.txt.classstats-*.npz"))) == 1


def test_a_same_size_rewrite_a_damaged_cache_and_a_full_disk_are_counted_again(world, universal_converter, monkeypatch, tmp_path):
    import os

    from mseg_semantic.atomic import DiskFullError

    name = "mapillary-public65"
    list_dir = world / f"dataset_lists/{name}/list"
    build_train_loader(rcs_cfg(world), [name], universal_converter)
    counted = []
    original = rare_class._count_image
    monkeypatch.setattr(rare_class, "_count_image", lambda *a: counted.append(a[0]) or original(*a))
    label = label_files(world, name)[0]
    stat = label.stat()
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place: same size, new time
    build_train_loader(rcs_cfg(world), [name], universal_converter)
    assert len(counted) == 8
    newest = max(list_dir.glob("train.txt.classstats-*.npz"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(newest.read_bytes()[:40])  # a truncated cache: an error of the zip reader, not a crash
    counted.clear()
    build_train_loader(rcs_cfg(world), [name], universal_converter)
    assert len(counted) == 8
    # a full disk beside the list: the user's cache folder takes the statistics, and training goes on
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_write = rare_class.atomic_write_bytes

    def full_beside_the_list(path, data):
        if str(path).startswith(str(world)):
            raise DiskFullError(f"{path}: the disk is full")
        return real_write(path, data)

    monkeypatch.setattr(rare_class, "atomic_write_bytes", full_beside_the_list)
    for path in list_dir.glob("train.txt.classstats-*.npz"):
        path.unlink()
    build_train_loader(rcs_cfg(world), [name], universal_converter)
    assert len(list((tmp_path / "cache" / "mseg_semantic" / "classstats").glob(f"{name}-*.npz"))) == 1


def test_a_resume_over_changed_labels_is_refused_naming_the_dataset(world, universal_converter):
    names = ["cityscapes-19", "mapillary-public65"]
    loader = build_train_loader(rcs_cfg(world), names, universal_converter)
    state = loader.state_dict()
    build_train_loader(rcs_cfg(world), names, universal_converter).load_state_dict(state)  # the same labels: accepted
    state["fingerprint"]["rare_class_sampling"]["class_counts"]["mapillary-public65"] = "0123456789abcdef"
    with pytest.raises(UserError, match=r"rare_class_sampling\.class_counts\.mapillary-public65: saved '0123456789abcdef'") as info:
        build_train_loader(rcs_cfg(world), names, universal_converter).load_state_dict(state)
    assert "cityscapes-19" not in str(info.value)


def test_label_sets_count_for_their_one_hot_target_and_reach_the_crop(world, universal_converter, set_valued_converter):
    loader = build_train_loader(rcs_cfg(world), TRAIN, set_valued_converter)
    plan = loader.sampler.rare_classes
    one_hot = build_train_loader(rcs_cfg(world), TRAIN, universal_converter).sampler.rare_classes
    np.testing.assert_array_equal(plan.frequencies, one_hot.frequencies)
    fence, guard_rail = (set_valued_converter.name_to_id[n] for n in ("fence", "guard_rail"))
    ade = TRAIN.index("ade20k-150")
    # ADE20K's `fence` is the set {fence, guard_rail}: its pixels count for fence; guard rails come from Mapillary only
    assert fence in plan.choices[ade].classes and guard_rail not in plan.choices[ade].classes
    mapillary_only = plan.frequencies[guard_rail] * 3
    mapillary = TRAIN.index("mapillary-public65")
    stats = rare_class.dataset_stats(_location(world, "mapillary-public65"), loader.reader.samples[mapillary], set_valued_converter)
    assert mapillary_only == pytest.approx(stats.class_pixels()[guard_rail] / stats.labeled.sum())
    fence_set = set_valued_converter.label_sets.code_of([fence, guard_rail])
    for position in range(60):
        model_class, index = plan.choose(3, position, ade)
        if model_class == fence:
            _, crop = loader.reader.load(ade, index, position, model_class)
            assert (crop == fence_set).any()  # the crop holds the set's code, which the partial-label loss reads
            break
    else:
        pytest.fail("no ADE20K row chose fence in 60 draws")


def _location(world, name):
    from mseg_semantic.taxonomy import Catalog

    return Catalog(data_root=world).locate(name, "train")


def test_bad_settings_and_a_dataset_without_qualifying_classes(world, universal_converter, caplog):
    with pytest.raises(UserError, match="rare_class_temperature"):
        rcs_cfg(world, rare_class_temperature=0)
    with pytest.raises(UserError, match="rare_class_min_pixels"):
        rcs_cfg(world, rare_class_min_pixels=0)
    loader = build_train_loader(rcs_cfg(world, rare_class_min_pixels=10**7), ["cityscapes-19"], universal_converter)
    assert "no class of cityscapes-19 has 10000000 pixels" in caplog.text
    refs, _ = loader.sampler.batch_refs(loader.sampler.start())
    assert all(ref.rare_class == -1 for ref in refs)  # drawn as without RCS
    assert isinstance(refs[0], SampleRef)
