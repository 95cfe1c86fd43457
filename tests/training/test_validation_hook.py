"""TRAIN.val_every in real training runs: logged scalars, model_best.pth, resume, precise BN, DDP, early refusal."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from mseg_semantic.data.demo_world import generate
from train_helpers import assert_states_equal, final_state, make_world, run_torchrun, run_train, write_config

VALIDATION = {"val_every": 2, "val_datasets": ["camvid-11"], "tensorboard": True}
TEST = {"test_h": 32, "test_w": 32, "base_size": 48, "window_batch": 4}


def config_with_validation(tmp_path, world, **train):
    path = write_config(tmp_path / "val.yaml", world, train={**VALIDATION, **train})
    data = yaml.safe_load(path.read_text())
    data["TEST"] = dict(TEST)
    path.write_text(yaml.safe_dump(data))
    return path


def validation_lines(output_dir):
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "val/miou" in line]


@pytest.mark.slow
def test_validation_is_logged_keeps_model_best_and_resumes_exactly(tmp_path):
    world = make_world(tmp_path / "world")
    config = config_with_validation(tmp_path, world, max_iters=6, checkpoint_every=2)
    whole = run_train(config, f"output_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    lines = validation_lines(tmp_path / "whole")
    assert [line["iteration"] for line in lines] == [2, 4, 6]
    assert all("val/camvid-11/miou" in line and "val/best_miou" in line for line in lines)
    assert list((tmp_path / "whole" / "tensorboard").glob("events.*"))
    best = torch.load(tmp_path / "whole" / "model_best.pth", weights_only=True)
    checkpoint = torch.load(tmp_path / "whole" / "checkpoints" / "last.pth", weights_only=True)
    record = checkpoint["extra"]["validation"]
    assert best["meta"]["iteration"] == record["iteration"] and best["meta"]["val_value"] == pytest.approx(record["value"])
    assert record["value"] == pytest.approx(max(line["val/miou"] for line in lines))
    assert "validation at iteration 6" in (tmp_path / "whole" / "train.log").read_text()

    # as if killed after iteration 5: the checkpoint of 4 is the newest; resuming gives the same weights, scores and best
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "whole", part)
    for name in ("model_final.pth", "checkpoints/iter_00000006.pth", "checkpoints/last.pth"):
        (part / name).unlink()
    again = run_train(config, f"output_dir={part}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in (part / "train.log").read_text()
    assert_states_equal(final_state(part), final_state(tmp_path / "whole"))
    resumed = validation_lines(part)
    assert [line["iteration"] for line in resumed] == [2, 4, 6]
    for a, b in zip(resumed, lines):
        assert a["val/miou"] == b["val/miou"] and a["val/best_miou"] == b["val/best_miou"]
    assert torch.load(part / "model_best.pth", weights_only=True)["meta"]["iteration"] == best["meta"]["iteration"]
    assert torch.load(part / "checkpoints" / "last.pth", weights_only=True)["extra"]["validation"] == record


@pytest.mark.slow
def test_last_validation_follows_precise_bn_and_bad_datasets_stop_before_config_yaml(tmp_path):
    world = make_world(tmp_path / "world")
    config = config_with_validation(tmp_path, world, max_iters=4, precise_bn_iters=2)
    done = run_train(config, f"output_dir={tmp_path / 'bn'}")
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "bn" / "train.log").read_text()
    assert log.index("re-estimated the running statistics") < log.index("validation at iteration 4")
    assert [line["iteration"] for line in validation_lines(tmp_path / "bn")] == [2, 4]

    refused = run_train(config, f"output_dir={tmp_path / 'refused'}", "val_datasets=[camvid-11,kitti-19]")
    assert refused.returncode == 2
    assert "TRAIN.val_datasets: kitti-19 val list not found" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "refused" / "config.yaml").exists()


@pytest.mark.slow
def test_two_ranks_validate_shards_and_agree_with_one_rank(tmp_path):
    world = tmp_path / "world"
    generate(world, counts={"train": 6}, heldout_counts={"val": 3})
    config = config_with_validation(tmp_path, world, max_iters=2, checkpoint_every=2, freeze_bn=True, tensorboard=False)
    single = run_train(config, f"output_dir={tmp_path / 'one'}")
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_torchrun(config, 2, f"output_dir={tmp_path / 'two'}", timeout=180)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = validation_lines(tmp_path / "one")[-1], validation_lines(tmp_path / "two")[-1]
    # 3 images over 2 ranks (2 + 1), the confusion matrices summed: the scores of one process on all 3
    for key in ("val/camvid-11/miou", "val/camvid-11/pixel_acc", "val/camvid-11/miou_mseg"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    assert (tmp_path / "two" / "model_best.pth").is_file()
