"""Evaluation tools on bad input: an ONNX opset the exporter cannot write, a folder with unreadable images for
mseg-demo, a user taxonomy named without its file; and the validation log's best score in percent."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval_helpers import ColourOracleNet, TinySegNet, colour_world, random_image, write_dataset
from mseg_semantic.errors import UserError
from mseg_semantic.evaluation import export as export_module
from mseg_semantic.evaluation.export import export_onnx, supported_opsets
from mseg_semantic.model import build_model
from mseg_semantic.taxonomy import load_class_colors
from mseg_semantic.tool import demo as mseg_demo
from mseg_semantic.tool import export as mseg_export

CONFIG = Path(__file__).resolve().parents[2] / "config" / "test" / "default_config_360_ss.yaml"


def _one_error_line(err: str, prog: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model_final.pth"
    meta = {"model": "hrnet_tiny", "num_classes": 194, "model_taxonomy": "universal", "train_datasets": ["cityscapes-19"]}
    torch.save({"state_dict": build_model("hrnet_tiny", 194).state_dict(), "meta": meta}, path)
    return path


@pytest.mark.parametrize("dynamo", ["true", "false"])
def test_an_opset_outside_the_exporters_range_is_exit_2_naming_the_range(checkpoint, tmp_path, capsys, dynamo):
    low, high = supported_opsets(dynamo == "true")
    args = ["--config", str(CONFIG), f"model_path={checkpoint}", "test_h=32", "test_w=32", "export_format=onnx",
            f"export_dynamo={dynamo}", "export_opset=99", f"save_folder={tmp_path}"]
    assert mseg_export.main(args) == 2
    line = _one_error_line(capsys.readouterr().err, "mseg-export")
    assert f"ONNX opset 99 (TEST.export_opset): the" in line and f"exporter here writes opsets {low}..{high}" in line
    assert list(tmp_path.iterdir()) == []


def test_the_opset_written_is_the_one_asked_for_or_the_export_is_refused(tmp_path, monkeypatch):
    model = TinySegNet(num_classes=3).eval()
    assert export_onnx(model, tmp_path / "ok.onnx", 16, 16, opset=19).opset == 19
    # an exporter that cannot convert falls back to its own opset; a range that let 99 through shows it is caught
    monkeypatch.setattr(export_module, "supported_opsets", lambda dynamo=True: (17, 99))
    with pytest.raises(UserError, match=r"could not convert the model to it and wrote opset \d+; nothing was written"):
        export_onnx(model, tmp_path / "far.onnx", 16, 16, opset=99)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.onnx"]


def test_demo_reports_each_unreadable_image_segments_the_others_and_exits_1(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(folder / name), random_image(20, 28))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "d.jpg").write_bytes(b"")
    out = tmp_path / "out"
    args = ["--config", str(CONFIG), f"model_path={checkpoint}", "base_size=20", "test_h=32", "test_w=32",
            "test_device=cpu", f"save_folder={out}", f"input={folder}", "TEST.batch_size_val=2"]
    assert mseg_demo.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    skipped = [line for line in err.splitlines() if line.startswith("mseg-demo: skipped ")]
    assert skipped == [f"mseg-demo: skipped {folder / 'b.png'}: cannot be decoded as an image (corrupt or not an image file)",
                       f"mseg-demo: skipped {folder / 'd.jpg'}: cannot be decoded as an image (corrupt or not an image file)"]
    assert "mseg-demo: 2 image(s) could not be read (listed above); the others were segmented" in err
    assert sorted(p.name for p in out.iterdir()) == ["a_demo.png", "a_label.png", "c_demo.png", "c_label.png"]
    # one image given on its own is the input itself: bad input, exit 2
    assert mseg_demo.main(args[:-2] + [f"input={folder / 'b.png'}"]) == 2
    assert f"{folder / 'b.png'}: cannot be decoded" in _one_error_line(capsys.readouterr().err, "mseg-demo")


def test_a_user_taxonomy_named_without_its_file_says_to_pass_taxonomy_files(checkpoint, tmp_path, capsys):
    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "a.png"), random_image(20, 28))
    args = ["--config", str(CONFIG), f"model_path={checkpoint}", "base_size=20", "test_h=32", "test_w=32",
            "test_device=cpu", f"save_folder={tmp_path / 'o'}", f"input={tmp_path / 'a.png'}", "output_taxonomy=my-roads-4"]
    assert mseg_demo.main(args) == 2
    line = _one_error_line(capsys.readouterr().err, "mseg-demo")
    assert "TEST.output_taxonomy='my-roads-4' is not a known taxonomy" in line
    assert "pass taxonomy_files=[path/to/FILE.tsv]" in line


def test_a_changed_val_metric_logs_the_old_best_in_percent(tmp_path):
    from mseg_semantic.config import load_config
    from mseg_semantic.evaluation.validation import STATE_KEY, build_validator, log

    write_dataset(tmp_path / "data", "camvid-11", colour_world(11, 2, 24, 32, load_class_colors("camvid-11"), seed=7))
    cfg = load_config(None, [f"data_root={tmp_path / 'data'}", "val_every=2", "val_datasets=[camvid-11]", "val_metric=pixel_acc"])
    meta = {"model": "colour_oracle", "num_classes": 194, "model_taxonomy": "universal", "train_datasets": ["cityscapes-19"]}
    state = {STATE_KEY: {"metric": "val/miou", "value": 0.0475, "iteration": 2}}
    validator = build_validator(cfg, ColourOracleNet(np.zeros((194, 3), np.float32)), meta, state, tmp_path, 4, True, lambda it, s: None)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        assert validator.best is None
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    messages = [record.getMessage() for record in records]
    assert any("the best so far (4.75) no longer counts" in m for m in messages), messages
