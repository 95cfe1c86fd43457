"""mseg-train refusals found by a QA pass: stage names that are not plain folder names, weights files holding pickled
objects, cached released weights damaged after they were recorded. Each is exit 2 with one line."""

from __future__ import annotations

import io
import os

import pytest
import torch

from mseg_semantic.tool.train import main
from train_helpers import make_world, write_config


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def _single_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("mseg-train: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name", ["a/../../b", "..", "", "a/b", ".hidden", "a..b", "x" * 101, "pre train"])
def test_a_stage_name_that_is_not_a_plain_folder_name_is_refused(world, tmp_path, capsys, name):
    out = tmp_path / "nest" / "run"
    config = write_config(tmp_path / "staged.yaml", world, train={"output_dir": str(out)},
                          stages=[{"name": "pre", "overrides": {"max_iters": 1}}, {"name": name, "overrides": {"max_iters": 2}}])
    assert main(["--config", str(config)]) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert f"STAGES[1] name {name!r} is not a folder name" in line and "letters, digits" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staged.yaml"]  # nothing written, inside or outside


def test_valid_stage_names_are_accepted(world, tmp_path):
    from mseg_semantic.config import load_config, stage_names

    config = write_config(tmp_path / "staged.yaml", world, stages=[{"name": "pre-train_1.5", "overrides": {}}, {"name": "2", "overrides": {}}])
    assert stage_names(load_config(config)) == ["pre-train_1.5", "2"]


def test_weights_or_resume_holding_pickled_objects_are_refused_without_unsafe_advice(world, tmp_path, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": Payload()}, evil)
    config = write_config(tmp_path / "tiny.yaml", world)
    for option in ("weights", "resume"):
        assert main(["--config", str(config), f"output_dir={tmp_path / option}", f"{option}={evil}"]) == 2
        line = _single_error_line(capsys.readouterr().err)
        assert f"{evil} holds objects a weights file does not need (posix.getcwd): refused" in line, line
        assert "weights_only" not in line and "will likely succeed" not in line and "--force" not in line


def test_released_weights_damaged_in_the_cache_are_exit_2_as_the_docs_say(world, tmp_path, capsys, monkeypatch):
    from mseg_semantic.model import weights as W

    monkeypatch.setenv("MSEG_CACHE", str(tmp_path / "cache"))
    path = W.weights_path("hrnet_w48_imagenet")
    path.parent.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, buffer)
    good = buffer.getvalue()
    path.write_bytes(good)
    W.verify_weights("hrnet_w48_imagenet")  # recorded, as after `mseg-weights download`
    middle = len(good) // 2
    path.write_bytes(good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1:])
    config = write_config(tmp_path / "tiny.yaml", world)
    assert main(["--config", str(config), f"output_dir={tmp_path / 'run'}", "weights=hrnet_w48_imagenet"]) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert f"{path}: SHA-256" in line and "mseg-weights download hrnet_w48_imagenet --force" in line
    assert line in (tmp_path / "run" / "train.log").read_text()


def test_released_weights_missing_from_the_cache_are_exit_2_as_the_readme_says(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MSEG_CACHE", str(tmp_path / "empty_cache"))
    config = write_config(tmp_path / "tiny.yaml", world)
    assert main(["--config", str(config), f"output_dir={tmp_path / 'run'}", "weights=hrnet_w48_imagenet"]) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert "TRAIN.weights=hrnet_w48_imagenet: hrnet_w48_imagenet has no direct download link" in line
    assert "mseg-weights" in line and "weights=null" in line
    assert main(["--config", str(config), f"output_dir={tmp_path / 'run2'}", f"weights={tmp_path / 'no_such.pth'}"]) == 2
    assert "no_such.pth' is neither a file nor a released weights name" in _single_error_line(capsys.readouterr().err)
