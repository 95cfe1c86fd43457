"""Multi-dataset mixing: proportions, determinism, epochs, rank shares, MSeg's dataset_gpu_mapping."""

from collections import Counter

import numpy as np
import pytest

from mseg_semantic.data.sampler import MixingSampler, stratified_counts

NAMES = ["a", "b", "c"]


def run(sampler, batches, cursor=None):
    cursor = cursor or sampler.start()
    out = []
    for _ in range(batches):
        refs, cursor = sampler.batch_refs(cursor)
        out.append(refs)
    return out, cursor


def test_stratified_counts_have_exact_expectation():
    rng = np.random.default_rng(0)
    weights = np.array([1.0, 2.0, 3.5, 0.5])
    total = np.zeros(4)
    for _ in range(4000):
        counts = stratified_counts(5, weights, rng)
        assert counts.sum() == 5
        # never further than one from the quota
        assert (np.abs(counts - 5 * weights / weights.sum()) < 1).all()
        total += counts
    assert np.allclose(total / 4000, 5 * weights / weights.sum(), atol=0.03)


def test_stratified_counts_never_give_a_row_to_a_weight_0_dataset():
    class LastDraw:  # the largest value rng.random() can return, with the weight-0 dataset ordered last
        def permutation(self, n):
            return np.array([0, 2, 3, 1])

        def random(self):
            return 1.0 - 2.0**-53  # + 1 rounds to 2.0: the pick lands exactly on the last edge

    counts = stratified_counts(6, np.array([32.0, 0.0, 31.0, 38.0]), LastDraw())
    assert counts[1] == 0 and counts.sum() == 6


def test_uniform_default_gives_every_dataset_an_equal_share_of_every_batch():
    sampler = MixingSampler(NAMES, [5, 50, 500], batch_size=6, seed=1)
    batches, _ = run(sampler, 20)
    for refs in batches:
        assert Counter(r.dataset for r in refs) == {0: 2, 1: 2, 2: 2}  # B a multiple of D: exact, as MSeg's mapping
    # rows are shuffled, so a rank's half is not always the same datasets
    assert len({tuple(r.dataset for r in refs[:3]) for refs in batches}) > 3


def test_weights_set_the_long_run_proportions():
    sampler = MixingSampler(NAMES, [10, 10, 10], batch_size=5, seed=0, sampling_weights={"a": 1, "b": 3, "c": 0})
    batches, cursor = run(sampler, 400)
    counts = Counter(r.dataset for refs in batches for r in refs)
    assert counts[2] == 0
    assert counts[1] / 2000 == pytest.approx(0.75, abs=0.02)
    assert cursor.draws == [counts[0], counts[1], 0]


def test_each_epoch_is_a_fresh_permutation_of_the_dataset():
    sampler = MixingSampler(["a"], [7], batch_size=7, seed=3)
    batches, _ = run(sampler, 3)
    epochs = [[r.index for r in refs] for refs in batches]
    for order in epochs:
        assert sorted(order) == list(range(7))
    assert epochs[0] != epochs[1] != epochs[2]


def test_the_stream_is_a_function_of_the_seed_and_resumes_from_a_cursor():
    a = MixingSampler(NAMES, [5, 6, 7], batch_size=4, seed=11)
    first, cursor = run(a, 9)
    rest, _ = run(a, 5, cursor)
    b = MixingSampler(NAMES, [5, 6, 7], batch_size=4, seed=11)
    resumed, _ = run(b, 5, cursor.copy())
    assert resumed == rest
    c = MixingSampler(NAMES, [5, 6, 7], batch_size=4, seed=12)
    assert run(c, 9)[0] != first


def test_rank_rows_split_the_global_batch():
    sampler = MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0, world_size=3)
    assert [list(sampler.rank_rows(r)) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="not divisible by world_size 4"):
        MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0, world_size=4)


def test_dataset_gpu_mapping_puts_each_dataset_on_its_ranks():
    mapping = {"a": [0], "b": [1], "c": [2, 3]}
    sampler = MixingSampler(NAMES, [5, 6, 7], batch_size=8, seed=0, world_size=4, dataset_gpu_mapping=mapping)
    batches, _ = run(sampler, 10)
    for refs in batches:
        for rank in range(4):
            datasets = {refs[i].dataset for i in sampler.rank_rows(rank)}
            assert datasets == {min(rank, 2)}
    # c spread over ranks 2 and 3 still walks one permutation: every sample once per pass
    c_indices = [r.index for refs in batches for r in refs if r.dataset == 2][:7]
    assert sorted(c_indices) == list(range(7))


def test_dataset_gpu_mapping_errors_name_the_numbers():
    mapping = {n: [i] for i, n in enumerate(NAMES)}
    with pytest.raises(ValueError, match=r"uses 3 GPUs .* world_size is 2"):
        MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0, world_size=2, dataset_gpu_mapping=mapping)
    with pytest.raises(ValueError, match="unmapped: c"):
        MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0, world_size=2, dataset_gpu_mapping={"a": [0], "b": [1]})
    with pytest.raises(ValueError, match=r"rank\(s\) \[1\]"):
        MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0, world_size=3, dataset_gpu_mapping={"a": [0], "b": [2], "c": [0]})


def test_bad_weights_and_sizes_are_named():
    with pytest.raises(ValueError, match="missing: c"):
        MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0, sampling_weights={"a": 1, "b": 1})
    with pytest.raises(ValueError, match="unknown: z"):
        MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0, sampling_weights={"a": 1, "b": 1, "c": 1, "z": 1})
    with pytest.raises(ValueError, match="empty split list: b"):
        MixingSampler(NAMES, [5, 0, 7], batch_size=6, seed=0)


def test_saved_state_of_another_stream_is_refused():
    sampler = MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0)
    other = MixingSampler(NAMES, [5, 6, 8], batch_size=6, seed=0).fingerprint()
    with pytest.raises(ValueError, match="sizes: saved"):
        sampler.check_state(other)
    sampler.check_state(MixingSampler(NAMES, [5, 6, 7], batch_size=6, seed=0, world_size=2).fingerprint())
