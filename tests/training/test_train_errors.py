"""Bad input to mseg-train: exit 2, one line naming the file, key or value (no traceback), and the same line in
train.log once the run has one. A second run into a busy output_dir is refused; a file is never half-written."""

from __future__ import annotations

import signal
import subprocess
import time

import cv2
import numpy as np
import pytest

from mseg_semantic.tool.train import main
from train_helpers import REPO, make_world, run_train, subprocess_env, train_command, write_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def private_world(world, tmp_path):
    import shutil

    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    return copy


def _labels(world):
    list_file = world / "dataset_lists/cityscapes-19/list/train.txt"
    return [world / "Cityscapes" / line.split()[1] for line in list_file.read_text().splitlines()]


def _single_error_line(err: str, prog: str = "mseg-train") -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("overrides,expected", [
    (["dataset=[cityscapes-19,ade20k-15]"], "DATA.dataset: unknown dataset 'ade20k-15' (did you mean 'ade20k-150'?)"),
    (["model=hrnet_w49"], "TRAIN.model='hrnet_w49' is not a model (did you mean 'hrnet_w48'?)"),
    (["base_lr=-0.01"], "TRAIN.base_lr=-0.01: must be > 0"),
    (["batch_size=0"], "TRAIN.batch_size=0: must be > 0"),
    (["on_bad_sample=skipp"], "DATA.on_bad_sample='skipp' is not one of error, skip"),
    (["train_h=0"], "TRAIN.train_h=0: must be > 0"),
    (["scale_min=2.5"], "TRAIN.scale_min=2.5 > TRAIN.scale_max=2.0"),
    (["DATA.sampling_weights={cityscapes-19: 1, ade20k-150: 1}"], "sampling_weights must give one weight per training dataset; missing: mapillary-public65"),
    (["workers=-1"], "TRAIN.workers=-1: must be >= 0"),
    (["grad_clip=-1"], "TRAIN.grad_clip=-1.0: must be > 0"),
    (["momentum=2"], "TRAIN.momentum=2.0: must be <= 1"),
    (["power=-1"], "TRAIN.power=-1.0: must be >= 0"),
    (["dataset=[camvid-11]"], "'camvid-11' is a test taxonomy: its class 'Bicyclist' receives 2 universal classes (bicyclist, bicycle), so its pixels have no one-hot universal target; train it with label sets: TRAIN.loss=partial_label"),
])
def test_bad_values_exit_2_with_one_line(world, tmp_path, capsys, overrides, expected):
    config = write_config(tmp_path / "tiny.yaml", world, train={"output_dir": str(tmp_path / "run")})
    assert main(["--config", str(config), *overrides]) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert expected in line, line
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("breakage,expected", [
    ("missing", "file does not exist"),
    ("corrupt", "cannot be decoded as an image"),
    ("wrong_size", "differs from image"),
    ("colour", "label must be a single-channel 8-bit PNG, got 3 channels"),
    ("unknown_ids", "holds id(s) 40, 77 that its taxonomy does not have"),
    ("empty_list", "dataset_lists/cityscapes-19/list/train.txt of dataset 'cityscapes-19' names no samples"),
])
def test_every_bad_sample_is_exit_2_naming_the_file_also_in_train_log(private_world, tmp_path, capsys, breakage, expected):
    label = _labels(private_world)[0]
    if breakage == "missing":
        label.unlink()
    elif breakage == "corrupt":
        label.write_bytes(b"not a png")
    elif breakage == "wrong_size":
        cv2.imwrite(str(label), np.zeros((7, 9), np.uint8))
    elif breakage == "colour":
        cv2.imwrite(str(label), np.zeros((8, 8, 3), np.uint8))
    elif breakage == "unknown_ids":
        ids = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        ids[0, 0], ids[-1, -1] = 40, 77  # two pixels in corners: the whole label is checked, not only the crop
        cv2.imwrite(str(label), ids)
    else:
        (private_world / "dataset_lists/cityscapes-19/list/train.txt").write_text("")
    out = tmp_path / "run"
    config = write_config(tmp_path / "tiny.yaml", private_world, train={"output_dir": str(out), "max_iters": 30},
                          data={"dataset": ["cityscapes-19"]})
    assert main(["--config", str(config), "batch_size=4"]) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert expected in line, line
    if breakage != "empty_list":
        assert str(label) in line
        assert line in (out / "train.log").read_text()  # the run's log says why it stopped
    if breakage == "unknown_ids":
        assert "DATA.unknown_label=ignore" in line  # the hint names the config key


def test_weights_that_are_not_weights_and_output_dirs_that_cannot_be_written(world, tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", world)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    assert main(["--config", str(config), f"output_dir={tmp_path / 'a'}", f"weights={text}"]) == 2
    assert f"{text} is not a PyTorch checkpoint (it starts with b'these ar')" in _single_error_line(capsys.readouterr().err)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["--config", str(config), f"output_dir={a_file}"]) == 2
    assert str(a_file) in _single_error_line(capsys.readouterr().err)
    # a place nobody may write, root included (CI runs as root, which ignores a read-only mode)
    assert main(["--config", str(config), "output_dir=/sys/mseg-train-run"]) == 2
    assert "/sys/mseg-train-run: Operation not permitted" in _single_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_a_second_run_into_a_busy_output_dir_is_refused_and_sigterm_checkpoints_and_resumes(world, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", world, train={"max_iters": 400, "checkpoint_every": 1000, "print_freq": 1})
    out = tmp_path / "run"
    first = subprocess.Popen(train_command(config, f"output_dir={out}"), cwd=REPO, env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while "iter 2/400" not in (out / "train.log").read_text() if (out / "train.log").exists() else True:
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.05)
        second = run_train(config, f"output_dir={out}")
        assert second.returncode == 2
        line = _single_error_line(second.stderr)
        assert f"in use by process {first.pid}" in line and str(out / ".mseg-train.lock") in line
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 75, err[-2000:]
    stopped = _single_error_line(err)
    assert "stopped by SIGTERM after iteration" in stopped and "run the same command again to resume" in stopped
    saved = sorted(int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("iter_*.pth"))
    assert saved and saved[-1] < 400  # checkpoint_every=1000: this one was written because of the signal
    resumed = run_train(config, f"output_dir={out}", "max_iters=" + str(saved[-1] + 2))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at iteration {saved[-1]}" in resumed.stderr
    assert "resume: TRAIN.max_iters changed from 400 to" in resumed.stderr  # a change that takes effect is logged
