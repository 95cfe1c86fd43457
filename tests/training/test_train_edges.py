"""Refusals before anything starts (a crop or batch that cannot fit) and a signal after the last iteration."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from mseg_semantic.config import ConfigError, load_config
from mseg_semantic.tool.train import main
from mseg_semantic.training.setup import resolve_run
from train_helpers import REPO, make_world, run_train, subprocess_env, train_command, write_config

DEMO = ["dataset=[cityscapes-19,ade20k-150]", "max_iters=10"]


@pytest.mark.parametrize("overrides, key", [
    (["train_h=100000"], r"TRAIN\.train_h x train_w = 100000 x 713: one crop needs at least .* GiB"),
    (["batch_size=100000000"], r"TRAIN\.batch_size: 100000000 crops of 713 x 713 per process need at least"),
])
def test_a_crop_or_batch_that_cannot_fit_is_refused_naming_the_key(overrides, key, capsys):
    with pytest.raises(ConfigError, match=key):
        resolve_run(load_config(None, DEMO + overrides))
    assert main(["--config", str(REPO / "config" / "train" / "demo.yaml"), *overrides]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mseg-train: error: TRAIN.")


def test_the_default_crops_and_batches_are_accepted():
    assert resolve_run(load_config(None, DEMO + ["batch_size=14"])).batch_per_rank == 14


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("edge_world"))


@pytest.mark.slow
def test_sigterm_during_precise_bn_after_the_last_iteration_exits_75_and_a_rerun_finishes(world, tmp_path):
    """After the last iteration the run re-estimates BatchNorm statistics and writes model_final.pth: a signal there
    stops at the next batch (the last checkpoint holds the trained weights), exit 75 and one line; running again finishes."""
    config = write_config(tmp_path / "tiny.yaml", world, train={"max_iters": 2, "checkpoint_every": 1, "precise_bn_iters": 100000})
    out = tmp_path / "run"
    run = subprocess.Popen(train_command(config, f"output_dir={out}"), cwd=REPO, env=subprocess_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoints" / "iter_00000002.pth").exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run did not reach its last iteration"
            time.sleep(0.05)
        time.sleep(0.5)  # into precise BN
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 75, err[-2000:]
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "stopped by SIGTERM during precise BN, after the last training iteration" in lines[0]
    assert "stopped by SIGTERM during precise BN" in (out / "train.log").read_text()
    assert not (out / "model_final.pth").exists()
    finished = run_train(config, f"output_dir={out}", "precise_bn_iters=2")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert (out / "model_final.pth").exists() and "at iteration 2" in finished.stderr


def test_a_resume_from_another_directory_names_the_run_that_wrote_the_checkpoint(tmp_path):
    from mseg_semantic.training.setup import accept_resume

    cfg = load_config(None, DEMO)
    saved = cfg.updated({"TRAIN.seed": 5}).to_dict()
    with pytest.raises(ConfigError, match=r"TRAIN.seed is 0 but the run that wrote it was started with 5"):
        accept_resume(cfg, saved, tmp_path / "other" / "iter_00000002.pth", same_dir=False)
    with pytest.raises(ConfigError, match=r"TRAIN.seed is 0 but the run in this output_dir was started with 5"):
        accept_resume(cfg, saved, tmp_path / "iter_00000002.pth")


def test_a_checkpoint_of_an_older_version_with_the_old_method_switch_is_compared_in_todays_keys(tmp_path):
    """An older run's saved config says DATA.use_mgda: true; resuming it with TRAIN.method=ce is refused by name."""
    from mseg_semantic.training.setup import accept_resume

    saved = load_config(None, DEMO + ["method=mgda"]).to_dict()
    saved["TRAIN"].pop("method")
    saved["DATA"]["use_mgda"], saved.setdefault("CCSA", {})["use_ccsa"] = True, False
    with pytest.raises(ConfigError, match=r"TRAIN.method is 'ce' but .* was started with 'mgda'"):
        accept_resume(load_config(None, DEMO), saved, tmp_path / "iter_00000002.pth")
    assert accept_resume(load_config(None, DEMO + ["method=mgda"]), saved, tmp_path / "iter_00000002.pth").TRAIN.method == "mgda"
