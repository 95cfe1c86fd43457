"""Packaged configs: names for the shipped files, each tool's default, --list-configs and --print-config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mseg_semantic.config import (
    DEFAULT_INFERENCE_CONFIG,
    ConfigError,
    find_config,
    load_config,
    packaged_configs,
)
from mseg_semantic.tool import demo as mseg_demo
from mseg_semantic.tool import export as mseg_export
from mseg_semantic.tool import test as mseg_test
from mseg_semantic.tool import train as mseg_train

REPO = Path(__file__).resolve().parents[1]


def test_every_yaml_of_the_repositorys_config_folder_is_packaged_and_loads():
    shipped = packaged_configs()
    in_repo = sorted(p.relative_to(REPO / "config").with_suffix("").as_posix() for p in (REPO / "config").rglob("*.yaml"))
    assert sorted(shipped) == in_repo and "test/default_config_360_ss" in shipped and "train/demo" in shipped
    for name, path in shipped.items():
        load_config(path)  # a shipped file that does not validate would fail the first user who names it


@pytest.mark.parametrize("name, kind, expected", [
    ("test/default_config_360_ss", None, "test/default_config_360_ss"),
    ("default_config_360_ss", "test", "test/default_config_360_ss"),
    ("default_config_720_ms.yaml", None, "test/default_config_720_ms"),
    ("demo", "train", "train/demo"),
    ("demo", "test", "test/demo"),
    ("480_release/mseg-3m", "train", "train/480_release/mseg-3m"),
    ("config/train/demo_crosswalk.yaml", "train", "train/demo_crosswalk"),  # the repository's path, from anywhere
])
def test_a_packaged_name_finds_its_file_from_any_directory(name, kind, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config(name, kind) == packaged_configs()[expected]


def test_a_file_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("demo").write_text("TRAIN:\n  max_iters: 3\n")
    assert find_config("demo", "train") == Path("demo")


def test_an_ambiguous_or_unknown_name_is_one_line_naming_the_candidates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="several packaged configs.*train/480_release/mseg-3m.*train/720_release/mseg-3m"):
        find_config("mseg-3m", "train")
    with pytest.raises(ConfigError, match=r"no packaged config is named 'default_config_360_s'.*did you mean 'default_config_360_ss'"):
        find_config("default_config_360_s", "test")


def test_train_without_a_config_refuses_listing_the_packaged_ones(capsys):
    assert mseg_train.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("mseg-train: error: --config is required") and "480_release/mseg-3m" in err and "demo_crosswalk" in err


def test_list_configs_names_each_file_and_what_it_is(capsys):
    assert mseg_test.main(["--list-configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = {line.split()[0]: line for line in lines}
    assert set(first) == set(packaged_configs())
    assert lines[0].split()[0].startswith("test/")  # the tool's own folder first
    assert "single scale" in first["test/default_config_360_ss"]


def test_help_lists_the_short_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mseg_demo.main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "default: test/default_config_360_ss" in out and "default_config_1080_ms" in out and "--print-config" in out


@pytest.mark.parametrize("tool", [mseg_demo, mseg_test, mseg_export])
def test_print_config_of_an_inference_tool_is_the_default_config_as_yaml(tool, capsys):
    assert tool.main(["--print-config", "base_size=480", "flip=false"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    expected = load_config(packaged_configs()[DEFAULT_INFERENCE_CONFIG], ["base_size=480", "flip=false"])
    assert printed == expected.to_dict()
    assert printed["TEST"]["base_size"] == 480 and printed["TEST"]["scales"] == [1.0] and printed["TEST"]["test_h"] == 713
    assert "# model_path: not set" in out and "# inference: short side 480, scales [1.0], 713 x 713 windows, flip False" in out


def test_print_config_refuses_what_the_run_would_refuse(capsys):
    assert mseg_demo.main(["--print-config", "output_taxonomy=cityscapes-91"]) == 2
    assert "TEST.output_taxonomy='cityscapes-91' is not a known taxonomy (did you mean 'cityscapes-19'" in capsys.readouterr().err
    assert mseg_demo.main(["--print-config", "model_path=no/such.pth"]) == 2
    assert "TEST.model_path=no/such.pth: no such file, and not a released model name" in capsys.readouterr().err
    assert mseg_demo.main(["--print-config", "bsae_size=3"]) == 2


def test_print_config_of_train_resolves_the_run(capsys):
    assert mseg_train.main(["--config", "demo", "--print-config", "max_iters=7", "batch_size=9"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["TRAIN"]["max_iters"] == 7
    plan = [line for line in out.splitlines() if line.startswith("# run:")]
    assert plan == ["# run: datasets cityscapes-19, ade20k-150, mapillary-public65; universal taxonomy (194 classes); 7 iterations; "
                    "batch 9 (9 per process); method ce, loss ce, fp32"]
    # a refusal of plan_run shows, as the run would show it
    assert mseg_train.main(["--config", "demo", "--print-config", "dataset=[camvid-11]"]) == 2
    assert "camvid-11" in capsys.readouterr().err


def test_print_config_of_train_on_two_processes_splits_the_batch(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert mseg_train.main(["--config", "demo", "--print-config"]) == 0
    assert "batch 6 (3 per process)" in capsys.readouterr().out
