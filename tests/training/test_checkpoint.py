"""Atomic checkpoints: complete-or-absent files, newest-first discovery, pruning, RNG state round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mseg_semantic.training.checkpoint import (
    LAST_NAME,
    atomic_torch_save,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    load_newest_checkpoint,
    remove_temporaries,
    restore_rng_state,
    save_checkpoint,
)


def _state(iteration: int) -> dict:
    return {"model": {"w": torch.full((2,), float(iteration))}, "optimizer": {}, "iteration": iteration}


def test_save_keeps_the_newest_and_links_last(tmp_path):
    for it in (10, 20, 30, 40):
        save_checkpoint(_state(it), tmp_path, it, keep=2)
    assert [it for it, _ in list_checkpoints(tmp_path)] == [40, 30]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_00000030.pth", "iter_00000040.pth", LAST_NAME]
    assert load_checkpoint(tmp_path / LAST_NAME)["iteration"] == 40
    path, state = load_newest_checkpoint(tmp_path)
    assert path.name == "iter_00000040.pth" and torch.equal(state["model"]["w"], torch.full((2,), 40.0))


def test_a_half_written_or_corrupt_file_is_never_loaded(tmp_path):
    save_checkpoint(_state(10), tmp_path, 10)
    # a run killed while writing leaves only a hidden temporary, which discovery ignores and cleanup removes
    (tmp_path / ".iter_00000020.pth.123.tmp").write_bytes(b"PK\x03\x04 truncated")
    assert [it for it, _ in list_checkpoints(tmp_path)] == [10]
    # a damaged file under a final name (e.g. a disk error) is skipped in favour of the previous one
    (tmp_path / "iter_00000030.pth").write_bytes(b"not a checkpoint")
    path, state = load_newest_checkpoint(tmp_path)
    assert state["iteration"] == 10
    remove_temporaries(tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))
    assert load_newest_checkpoint(tmp_path / "missing") is None


def test_atomic_save_failure_leaves_the_old_file(tmp_path):
    target = tmp_path / "x.pth"
    atomic_torch_save({"v": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"v": Unpicklable()}, target)
    assert torch.load(target)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]


def test_load_checkpoint_rejects_weights_only_files(tmp_path):
    atomic_torch_save({"state_dict": {}, "meta": {}}, tmp_path / "model_final.pth")
    with pytest.raises(ValueError, match="weights="):
        load_checkpoint(tmp_path / "model_final.pth")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pth")


def test_rng_state_round_trip_through_a_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state(torch.device("cpu"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    atomic_torch_save({"rng": state}, tmp_path / "rng.pth")
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"], torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
