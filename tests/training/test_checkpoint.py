"""Checkpoints: complete-or-absent files, newest-first discovery, pruning, restore, RNG round trip; temporaries of
killed writers; one run per output directory."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from mseg_semantic.atomic import atomic_write, remove_stale_temporaries, temporary_sibling
from mseg_semantic.training.checkpoint import (
    LAST_NAME,
    Checkpointer,
    CheckpointError,
    TrainingParts,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
)
from mseg_semantic.distributed import DistInfo
from mseg_semantic.training.lock import OutputDirInUse, OutputDirLock
from mseg_semantic.training.optim import PolyLR, build_sgd


class _Loader:
    def __init__(self):
        self.batch = 0

    def state_dict(self):
        return {"batch": self.batch}

    def load_state_dict(self, state):
        self.batch = state["batch"]


def _parts(value: float = 0.0) -> TrainingParts:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    optimizer = build_sgd(model.parameters(), 0.01, 0.9, 1e-4)
    return TrainingParts(model, optimizer, PolyLR(optimizer, 100), None, _Loader())


def test_save_keeps_the_newest_and_links_last(tmp_path):
    checkpointer = Checkpointer(tmp_path, DistInfo(), keep=2, run_record={"stage": None, "config": {"TRAIN": {}}})
    for it in (10, 20, 30, 40):
        checkpointer.save(_parts(it), it)
    assert [it for it, _ in list_checkpoints(tmp_path)] == [40, 30]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_00000030.pth", "iter_00000040.pth", LAST_NAME]
    assert load_checkpoint(tmp_path / LAST_NAME)["iteration"] == 40
    path, state = checkpointer.newest()
    assert path.name == "iter_00000040.pth" and torch.equal(state["model"]["weight"], torch.full((2, 2), 40.0))
    assert state["config"] == {"TRAIN": {}} and state["stage"] is None and state["extra"] == {}


def test_resuming_an_older_checkpoint_sets_the_newer_branch_aside_without_deleting_it(tmp_path):
    checkpointer = Checkpointer(tmp_path, DistInfo(), keep=1, run_record={"stage": None})
    checkpointer.keep = 3
    for it in (10, 20, 30):
        checkpointer.save(_parts(it), it)
    assert checkpointer.set_aside_newer(30) is None  # resuming the newest: nothing to move
    folder = checkpointer.set_aside_newer(10)  # a rollback (resume=iter_00000010.pth)
    assert sorted(p.name for p in folder.iterdir()) == ["iter_00000020.pth", "iter_00000030.pth"]
    assert load_checkpoint(folder / "iter_00000030.pth")["iteration"] == 30
    assert load_checkpoint(tmp_path / LAST_NAME)["iteration"] == 10
    checkpointer.keep = 1
    checkpointer.save(_parts(11), 11)  # the new branch's saves are the newest: kept, not pruned as old
    assert [it for it, _ in list_checkpoints(tmp_path)] == [11] and checkpointer.newest()[1]["iteration"] == 11
    # resumed from a checkpoint outside the directory: nothing older is left, last.pth goes aside too
    checkpointer.set_aside_newer(5)
    assert list_checkpoints(tmp_path) == [] and not (tmp_path / LAST_NAME).exists() and checkpointer.newest() is None


def test_a_half_written_or_corrupt_file_is_never_loaded(tmp_path):
    checkpointer = Checkpointer(tmp_path, DistInfo())
    checkpointer.save(_parts(10), 10)
    # a run killed while writing leaves only a hidden temporary, which discovery ignores and removes
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    leftover = tmp_path / f".iter_00000020.pth.{dead}-abc123.tmp.pth"
    leftover.write_bytes(b"PK\x03\x04 truncated")
    assert [it for it, _ in list_checkpoints(tmp_path)] == [10]
    # a damaged file under a final name (e.g. a disk error) is skipped in favour of the previous one
    (tmp_path / "iter_00000030.pth").write_bytes(b"not a checkpoint")
    path, state = checkpointer.newest()
    assert state["iteration"] == 10 and not leftover.exists()
    assert Checkpointer(tmp_path / "missing", DistInfo()).newest() is None


def test_a_live_writers_temporary_is_never_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = tmp_path / f".model_final.pth.{live.pid}-xyz.tmp.pth"
        theirs.write_bytes(b"being written")
        ours = temporary_sibling(tmp_path / "x.pth")  # this process's own, still open for writing
        assert remove_stale_temporaries(tmp_path) == []
        assert theirs.exists() and ours.exists()
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(tmp_path) == [theirs]


def test_atomic_save_failure_leaves_the_old_file(tmp_path):
    target = tmp_path / "x.pth"
    atomic_write(target, lambda handle: torch.save({"v": 1}, handle), durable=True)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, lambda handle: torch.save({"v": Unpicklable()}, handle), durable=True)
    assert torch.load(target)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pth"]


def test_load_checkpoint_rejects_weights_only_files(tmp_path):
    torch.save({"state_dict": {}, "meta": {}}, tmp_path / "model_final.pth")
    with pytest.raises(CheckpointError, match="weights="):
        load_checkpoint(tmp_path / "model_final.pth")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pth")


def test_an_older_checkpoint_with_msegs_head_names_is_translated(tmp_path):
    state = {"model": {"module.last_layer.3.weight": torch.ones(1)}, "optimizer": {}, "iteration": 1, "meta": {"taxonomy": "universal"}}
    torch.save(state, tmp_path / "old.pth")
    loaded = load_checkpoint(tmp_path / "old.pth")
    assert list(loaded["model"]) == ["head.classifier.weight"] and loaded["meta"] == {"model_taxonomy": "universal"}


def test_restore_applies_the_schedule_of_the_resumed_run(tmp_path):
    checkpointer = Checkpointer(tmp_path, DistInfo())
    parts = _parts(3.0)
    for _ in range(10):
        parts.optimizer.step()
        parts.scheduler.step()
    parts.loader.batch = 10
    parts.extra["best"] = {"value": 0.5}
    checkpointer.save(parts, 10)
    _, state = checkpointer.newest()
    fresh = _parts(0.0)
    start = checkpointer.restore(fresh, state, max_iters=200, schedule={"base_lr": 0.05, "power": 0.9, "momentum": 0.5, "weight_decay": 0.0})
    assert start == 10 and fresh.loader.batch == 10 and fresh.extra == {"best": {"value": 0.5}}
    assert torch.equal(fresh.model.weight, torch.full((2, 2), 3.0))
    group = fresh.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.05 * (1 - 10 / 200) ** 0.9)  # the new base_lr and length, at iteration 10
    assert (group["momentum"], group["weight_decay"]) == (0.5, 0.0)


def test_rng_state_round_trip_through_a_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng_state(torch.device("cpu"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.save({"rng": state}, tmp_path / "rng.pth")
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"], torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_one_run_per_output_dir_and_a_dead_holder_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mseg_semantic.training.lock import OutputDirLock; "
         "OutputDirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUse, match=rf"in use by process {holder.pid} on .*lock {tmp_path / '.mseg-train.lock'}"):
            OutputDirLock(tmp_path).acquire()
    finally:
        holder.kill()  # like kill -9: no clean-up runs
        holder.wait()
    with OutputDirLock(tmp_path) as lock:  # the kernel dropped the dead run's lock
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
