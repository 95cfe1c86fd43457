"""mseg-train end to end on the synthetic world: outputs, exact resume after SIGKILL, non-finite loss, stages."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
import yaml

from mseg_semantic.tool.train import EXIT_CONFIG_ERROR, main
from train_helpers import REPO, assert_states_equal, final_state, make_world, run_train, subprocess_env, train_command, write_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_exactly(world, tmp_path):
    # one loader worker process, as the demo runs: the resumed stream must not depend on prefetching
    config = write_config(tmp_path / "tiny.yaml", world, train={"max_iters": 24, "checkpoint_every": 3, "keep_checkpoints": 2, "workers": 1})

    reference = tmp_path / "reference"
    done = run_train(config, f"output_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]

    # Outputs of a run
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["iter_00000021.pth", "iter_00000024.pth", "last.pth"]
    saved = yaml.safe_load((reference / "config.yaml").read_text())
    assert saved["TRAIN"]["max_iters"] == 24 and saved["TRAIN"]["output_dir"] == str(reference)
    log_text = (reference / "train.log").read_text()
    assert "iter 24/24 loss" in log_text and "crops/s" in log_text
    final = torch.load(reference / "model_final.pth", weights_only=True)
    assert final["meta"]["model"] == "hrnet_tiny" and final["meta"]["num_classes"] == 194
    assert final["meta"]["model_taxonomy"] == "universal" and final["meta"]["train_datasets"] == ["cityscapes-19", "ade20k-150", "mapillary-public65"]
    last = torch.load(reference / "checkpoints" / "last.pth", weights_only=True)
    assert set(last) >= {"model", "optimizer", "scheduler", "scaler", "sampler", "rng", "iteration", "stage", "config", "meta"}
    assert last["iteration"] == 24

    # The same command, killed with SIGKILL once a checkpoint exists, then started again
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(train_command(config, f"output_dir={interrupted}"), cwd=REPO, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not (interrupted / "checkpoints" / "iter_00000003.pth").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "model_final.pth").exists(), "the run finished before the kill: nothing was tested"
    killed_at = max(int(p.stem.split("_")[1]) for p in (interrupted / "checkpoints").glob("iter_*.pth"))
    assert killed_at < 24

    resumed = run_train(config, f"output_dir={interrupted}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {interrupted / 'checkpoints'}" in resumed.stderr
    assert_states_equal(final_state(interrupted), final_state(reference))
    # the optimizer state (momentum) matches too, not just the weights
    resumed_last = torch.load(interrupted / "checkpoints" / "last.pth", weights_only=True)
    for key, value in last["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], resumed_last["optimizer"]["state"][key]["momentum_buffer"])

    # A finished run is not trained again
    again = run_train(config, f"output_dir={interrupted}")
    assert again.returncode == 0 and "is finished" in again.stderr

    # resume=PATH continues a checkpoint in another directory
    elsewhere = tmp_path / "elsewhere"
    explicit = run_train(config, f"output_dir={elsewhere}", f"resume={reference / 'checkpoints' / 'iter_00000021.pth'}")
    assert explicit.returncode == 0, explicit.stderr[-3000:]
    assert "at iteration 21" in explicit.stderr
    assert_states_equal(final_state(elsewhere), final_state(reference))


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(world, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", world, train={"max_iters": 40, "checkpoint_every": 1, "keep_checkpoints": 50, "base_lr": 1.0e12})
    out = tmp_path / "run"
    result = run_train(config, f"output_dir={out}")
    assert result.returncode == 3, result.stderr[-3000:]
    message = next(line for line in result.stderr.splitlines() if "non-finite loss" in line)
    failed_at = int(message.split("at iteration ")[1].split()[0])
    assert "lr " in message and "cityscapes-19=" in message and "last good state" in message
    assert not (out / "model_final.pth").exists()
    checkpoints = sorted(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("iter_*.pth"))
    assert checkpoints == list(range(1, failed_at))  # every good step saved, the bad one not
    newest = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert newest["iteration"] == failed_at - 1
    assert all(torch.isfinite(v).all() for v in newest["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_stages_chain_weights_skip_finished_stages_and_resume_inside_a_stage(world, tmp_path):
    stages = [
        {"name": "pre", "overrides": {"dataset": ["cityscapes-19"], "batch_size": 2, "max_iters": 2}},
        {"name": "main", "overrides": {"max_iters": 3}},
    ]
    config = write_config(tmp_path / "staged.yaml", world, stages=stages)
    out = tmp_path / "run"
    first = run_train(config, f"output_dir={out}")
    assert first.returncode == 0, first.stderr[-3000:]
    pre_meta = torch.load(out / "pre" / "model_final.pth", weights_only=True)["meta"]
    main_meta = torch.load(out / "main" / "model_final.pth", weights_only=True)["meta"]
    assert (pre_meta["train_datasets"], pre_meta["iterations"], pre_meta["stage"]) == (["cityscapes-19"], 2, "pre")
    assert (main_meta["train_datasets"], main_meta["iterations"], main_meta["stage"]) == (["cityscapes-19", "ade20k-150", "mapillary-public65"], 3, "main")
    assert f"fine-tuning from {out / 'pre' / 'model_final.pth'}" in first.stderr
    assert_states_equal(final_state(out), final_state(out / "main"))
    assert yaml.safe_load((out / "main" / "config.yaml").read_text())["TRAIN"]["stage"] == "main"
    assert [s["name"] for s in yaml.safe_load((out / "config.yaml").read_text())["STAGES"]] == ["pre", "main"]

    # stage=main alone, after its final model is removed: resumes from its own newest checkpoint
    (out / "main" / "model_final.pth").unlink()
    rerun = run_train(config, f"output_dir={out}", "stage=main")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {out / 'main' / 'checkpoints' / 'iter_00000003.pth'} at iteration 3" in rerun.stderr
    assert "fine-tuning" not in rerun.stderr

    # a later stage alone, without the earlier stage's weights, is an error that says what to do
    fresh = run_train(config, f"output_dir={tmp_path / 'fresh'}", "stage=main")
    assert fresh.returncode == EXIT_CONFIG_ERROR
    assert "run stage=pre first" in fresh.stderr


def test_config_errors_name_the_key_and_exit_2(world, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path / "tiny.yaml", world, train={"output_dir": str(tmp_path / "never")})
    assert main(["--config", str(config), "chekpoint_every=5"]) == EXIT_CONFIG_ERROR
    assert "'checkpoint_every'" in capsys.readouterr().err  # the nearest valid key
    assert main(["--config", str(config), "batch_size=six"]) == EXIT_CONFIG_ERROR
    assert "TRAIN.batch_size" in capsys.readouterr().err
    assert main(["--config", str(config), "dataset=single"]) == EXIT_CONFIG_ERROR
    assert "dataset=ade20k-150" in capsys.readouterr().err
    mapping = "dataset_gpu_mapping={cityscapes-19: [0], ade20k-150: [1], mapillary-public65: [2]}"
    assert main(["--config", str(config), mapping]) == EXIT_CONFIG_ERROR
    assert "dataset_gpu_mapping=null" in capsys.readouterr().err
    assert main(["--config", str(config), "precision=fp8"]) == EXIT_CONFIG_ERROR
    assert "fp32, bf16, fp16" in capsys.readouterr().err
    assert main(["--config", str(config), "universal=False"]) == EXIT_CONFIG_ERROR
    assert "oracle" in capsys.readouterr().err
    assert main(["--config", str(config), "freeze_bn=True", "precise_bn_iters=10"]) == EXIT_CONFIG_ERROR
    assert "precise BN would replace the frozen running statistics" in capsys.readouterr().err
    assert main(["--config", str(config), "stage=main"]) == EXIT_CONFIG_ERROR
    assert "defines no STAGES" in capsys.readouterr().err
    assert main(["--config", str(config), "max_iters=null", "num_examples=0"]) == EXIT_CONFIG_ERROR
    assert "TRAIN.num_examples=0: must be > 0" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "4")  # checked before any process group is joined
    assert main(["--config", str(config)]) == EXIT_CONFIG_ERROR
    assert "TRAIN.batch_size=6 (global) is not divisible by the number of processes 4" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    weights_only = tmp_path / "model_final.pth"
    torch.save({"state_dict": {}, "meta": {}}, weights_only)
    monkeypatch.delenv("WORLD_SIZE")
    assert main(["--config", str(config), f"resume={weights_only}", f"output_dir={tmp_path / 'resumed'}"]) == EXIT_CONFIG_ERROR
    assert f"weights={weights_only}" in capsys.readouterr().err  # resume= needs a training checkpoint


def test_a_resume_applies_or_refuses_each_changed_key_and_config_yaml_is_the_truth(world, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", world, train={"max_iters": 4, "checkpoint_every": 2})
    out = tmp_path / "run"
    first = run_train(config, f"output_dir={out}", "max_iters=2")
    assert first.returncode == 0, first.stderr[-3000:]
    (out / "model_final.pth").unlink()  # keep training this run
    saved = (out / "config.yaml").read_text()

    # a key that defines the run: refused, naming the key and both values; config.yaml untouched
    refused = run_train(config, f"output_dir={out}", "max_iters=4", "seed=7")
    assert refused.returncode == EXIT_CONFIG_ERROR
    assert "TRAIN.seed is 7 but the run in this output_dir was started with 0" in refused.stderr
    assert (out / "config.yaml").read_text() == saved

    # schedule keys take effect from the resumed iteration, the log says so, config.yaml records them
    resumed = run_train(config, f"output_dir={out}", "max_iters=4", "base_lr=0.05", "momentum=0.5", "weights=/elsewhere.pth")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resume: TRAIN.base_lr changed from 0.01 to 0.05; takes effect" in resumed.stderr
    assert "resume: TRAIN.momentum changed from 0.9 to 0.5; takes effect" in resumed.stderr
    assert "TRAIN.weights='/elsewhere.pth' is not used when resuming" in resumed.stderr
    recorded = yaml.safe_load((out / "config.yaml").read_text())["TRAIN"]
    assert (recorded["base_lr"], recorded["momentum"], recorded["weights"]) == (0.05, 0.5, None)
    last = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["momentum"] == 0.5
    logged = next(line for line in resumed.stderr.splitlines() if "iter 3/4 loss" in line)
    assert f"lr {0.05 * (1 - 3 / 4) ** 0.9:.6f}" in logged  # the poly curve of the new base_lr, at iteration 3


def test_every_stage_is_checked_as_it_will_run_before_training(world, tmp_path):
    from mseg_semantic.config import ConfigError, load_config
    from mseg_semantic.training.run import check_run

    # the datasets come from the stages only: the file alone would be "DATA.dataset is empty"
    stages = [{"name": "pre", "overrides": {"dataset": ["cityscapes-19"]}},
              {"name": "main", "overrides": {"dataset": ["cityscapes-19", "ade20k-150"], "batch_size": 4}}]
    config = write_config(tmp_path / "staged.yaml", world, data={"dataset": None}, stages=stages)
    check_run(load_config(config))
    check_run(load_config(config, ["stage=main"]))
    with pytest.raises(ConfigError, match="unknown stage 'mian'.*'main'"):
        check_run(load_config(config, ["stage=mian"]))
    # a stage's own overrides can make a refused combination that the file alone does not have
    stages[1]["overrides"].update(use_mgda=True, compile=True)
    config = write_config(tmp_path / "staged.yaml", world, data={"dataset": None}, stages=stages)
    with pytest.raises(ConfigError, match="TRAIN.compile=True with DATA.use_mgda=True"):
        check_run(load_config(config))
    check_run(load_config(config, ["stage=pre"]))  # only the stage this command trains


def test_a_resume_compares_one_name_and_a_list_of_it_as_equal(world, tmp_path):
    from mseg_semantic.config import ConfigError, load_config
    from mseg_semantic.training.run import accept_resume

    config = write_config(tmp_path / "one.yaml", world)
    saved = load_config(config, ["dataset=[cityscapes-19]"]).to_dict()
    now = load_config(config, ["dataset=cityscapes-19"])
    assert accept_resume(now, saved, tmp_path / "last.pth") is now
    with pytest.raises(ConfigError, match="DATA.dataset is \\['ade20k-150'\\] but the run in this output_dir was started with \\['cityscapes-19'\\]"):
        accept_resume(load_config(config, ["dataset=ade20k-150"]), saved, tmp_path / "last.pth")
