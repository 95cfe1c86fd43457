"""torchrun with 2 gloo processes takes the same optimisation steps as 1 process with the same global batch."""

from __future__ import annotations

import pytest
import torch

from mseg_semantic.model import build_model
from mseg_semantic.training.run import seed_everything
from mseg_semantic.distributed import DistInfo, per_rank_batch_size, shutdown_distributed
from train_helpers import final_state, make_world, run_torchrun, run_train, write_config


def test_per_rank_batch_size_needs_a_divisible_global_batch():
    assert per_rank_batch_size(14, 7) == 2
    with pytest.raises(ValueError, match="batch_size=14 .* not divisible by the number of processes 4"):
        per_rank_batch_size(14, 4)


@pytest.mark.parametrize("finished, calls", [(True, ["barrier", "destroy"]), (False, ["destroy"])])
def test_shutdown_waits_for_every_rank_only_after_a_finished_run(monkeypatch, finished, calls):
    """A finished rank leaving early can abort a peer still in a collective; a failed one must not wait for peers."""
    import torch.distributed as dist

    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: seen.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: seen.append("destroy"))
    shutdown_distributed(DistInfo(0, 2, backend="gloo"), finished=finished)
    assert seen == calls
    seen.clear()
    shutdown_distributed(DistInfo(0, 1, backend="gloo"))  # one process: no group to leave
    assert seen == []


@pytest.mark.slow
def test_two_gloo_ranks_match_one_rank_at_the_same_global_batch(tmp_path):
    world = make_world(tmp_path / "world")
    # BatchNorm in eval mode: per-rank batch statistics would otherwise differ from the full batch's (SyncBN is CUDA-only)
    config = write_config(tmp_path / "tiny.yaml", world, train={"max_iters": 3, "checkpoint_every": 3, "freeze_bn": True, "base_lr": 0.05})
    single = run_train(config, f"output_dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-3000:]

    double = run_torchrun(config, 2, f"output_dir={tmp_path / 'two'}")
    assert double.returncode == 0, double.stderr[-3000:]
    assert "global batch 6 (3 per process x 2)" in (tmp_path / "two" / "train.log").read_text()

    one, two = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    for key in one:  # identical up to float summation order
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")
    seed_everything(0)  # the trainer's initial weights
    initial = build_model("hrnet_tiny", num_classes=194).state_dict()
    moved = max((one[k] - initial[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert moved > 1e-3  # the runs did train: agreement is not that of two untouched models

    checkpoint = torch.load(tmp_path / "two" / "checkpoints" / "last.pth", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2 and len(checkpoint["sampler"]) == 2
    assert checkpoint["sampler"][0]["batch"] == checkpoint["sampler"][1]["batch"] == 3
    assert checkpoint["iteration"] == 3
