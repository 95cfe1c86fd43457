"""A test taxonomy (camvid-11, kitti-19, ...) or a user one as the training dataset of a universal model: its classes
train as the label sets of their universal preimages with loss=partial_label; loss=ce is refused in one line; the
release config and the docs give examples that resolve; a tiny run trains, validates and writes its model."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from mseg_semantic.config import load_config
from mseg_semantic.errors import UserError
from mseg_semantic.taxonomy import Catalog, build_taxonomy_converter, load_class_names
from mseg_semantic.tool.train import main
from mseg_semantic.training.setup import resolve_run
from train_helpers import REPO, write_config

USER_TEST_TAXONOMY = """taxonomy\troads-3
role\ttest
id\tname\tuniversal
0\troad\troad
1\tvehicle\tcar, truck, bus
2\tsky\tsky
"""


def test_a_test_taxonomy_trains_with_the_label_sets_of_its_universal_preimages():
    converter = build_taxonomy_converter("universal", ["camvid-11"], [], set_valued=True)
    names, universal = load_class_names("camvid-11"), converter.name_to_id
    bicyclist = names.index("Bicyclist")
    assert converter.class_sets["camvid-11"][bicyclist] == (universal["bicyclist"], universal["bicycle"])
    label = np.array([[names.index("Road"), bicyclist, 255]], np.uint8)
    codes = converter.transform_label(label, "camvid-11")
    assert codes[0, 0] == universal["road"] and codes[0, 2] == 255
    assert converter.label_sets.members[int(codes[0, 1])] == tuple(sorted((universal["bicyclist"], universal["bicycle"])))
    with pytest.raises(UserError, match=r"holds id\(s\) 11"):  # unknown ids are still never remapped silently
        converter.transform_label(np.array([[11]], np.uint8), "camvid-11")


def test_one_hot_training_of_a_test_taxonomy_is_refused_saying_why_and_what_to_use():
    with pytest.raises(UserError) as caught:
        build_taxonomy_converter("universal", ["kitti-19"], [])
    message = str(caught.value)
    assert "\n" not in message
    assert "'kitti-19' is a test taxonomy: its class 'pole' receives 2 universal classes (streetlight, pole)" in message
    assert "TRAIN.loss=partial_label" in message
    build_taxonomy_converter("universal", ["cityscapes-19"], [])  # a training taxonomy keeps its one-hot targets


def test_a_user_test_taxonomy_trains_too(tmp_path):
    (tmp_path / "roads.tsv").write_text(USER_TEST_TAXONOMY)
    catalog = Catalog([tmp_path / "roads.tsv"])
    converter = build_taxonomy_converter("universal", ["roads-3"], [], set_valued=True, catalog=catalog)
    vehicle = converter.class_sets["roads-3"][1]
    assert sorted(vehicle) == sorted(converter.name_to_id[n] for n in ("car", "truck", "bus"))
    with pytest.raises(UserError, match="'roads-3' is a test taxonomy: its class 'vehicle' receives 3"):
        build_taxonomy_converter("universal", ["roads-3"], [], catalog=catalog)


def _example_commands(text: str, config_name: str) -> list[tuple[int, list[str]]]:
    """(processes, overrides) of every `... --config .../CONFIG dataset=...` command line in ``text``."""
    found = []
    for line in text.splitlines():
        match = re.search(rf"--config (\S*{re.escape(config_name)})((?: \S+=\S+)*)", line)
        if match:
            nproc = re.search(r"--nproc_per_node (\d+)", line)
            found.append((int(nproc.group(1)) if nproc else 1, shlex.split(match.group(2))))
    return found


@pytest.mark.parametrize("where", ["config/train/1080_release/single_universal.yaml", "docs/training.md"])
def test_the_single_universal_examples_resolve(where, monkeypatch):
    monkeypatch.setattr("mseg_semantic.training.setup.check_memory", lambda *args: None)  # 1080p crops, any machine
    examples = _example_commands((REPO / where).read_text(), "single_universal.yaml")
    datasets = {o.split("=", 1)[1] for _, overrides in examples for o in overrides if o.startswith("dataset=")}
    assert {"camvid-11", "cityscapes-19"} <= datasets, examples
    for nproc, overrides in examples:
        setup = resolve_run(load_config(REPO / "config/train/1080_release/single_universal.yaml", overrides), nproc)
        assert setup.model_taxonomy == "universal" and setup.converter.num_classes == 194
        if "camvid-11" in setup.datasets:
            assert setup.loss == "partial_label"
    with pytest.raises(UserError, match="is a test taxonomy"):
        resolve_run(load_config(REPO / "config/train/1080_release/single_universal.yaml", ["dataset=camvid-11"]), 8)


@pytest.fixture(scope="module")
def camvid_world(tmp_path_factory):
    from mseg_semantic.data.demo_world import generate

    root = tmp_path_factory.mktemp("world")
    generate(root, counts={"train": 1}, heldout_counts={"train": 4, "val": 2})
    return root


def test_a_tiny_universal_run_on_camvid_11_trains_validates_and_says_which_validation_precedes_precise_bn(camvid_world, tmp_path, capsys):
    out = tmp_path / "run"
    config = write_config(tmp_path / "camvid.yaml", camvid_world, data={"dataset": "camvid-11"},
                          train={"output_dir": str(out), "batch_size": 2, "max_iters": 2, "val_every": 1, "loss": "partial_label",
                                 "precise_bn_iters": 1})
    assert main(["--config", str(config), "loss=ce"]) == 2
    assert "is a test taxonomy" in capsys.readouterr().err
    assert main(["--config", str(config)]) == 0
    meta = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["meta"]
    assert meta["train_datasets"] == ["camvid-11"] and meta["loss"] == "partial_label" and meta["num_classes"] == 194
    scores = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val/camvid-11/miou" in line]
    assert len(scores) == 2 and all(0.0 <= s["val/camvid-11/miou"] <= 1.0 for s in scores)
    assert [s["val/after_precise_bn"] for s in scores] == [0.0, 1.0]
    lines = [line for line in (out / "train.log").read_text().splitlines() if "validation at iteration" in line]
    assert len(lines) == 2, lines
    assert "validation at iteration 1 (before precise BN: BatchNorm running statistics from training" in lines[0]
    assert "validation at iteration 2 (after precise BN: the model written as model_final.pth)" in lines[1]
