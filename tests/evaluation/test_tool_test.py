"""mseg-test end to end on a tiny HRNet checkpoint and tiny generated datasets."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval_helpers import colour_world, write_dataset
from mseg_semantic.model import build_model
from mseg_semantic.taxonomy import load_class_colors
from mseg_semantic.tool import test as mseg_test

CONFIG = Path(__file__).resolve().parents[2] / "config" / "test" / "default_config_360_ss.yaml"


def save_checkpoint(path: Path, taxonomy="universal", num_classes=194, train_datasets=("cityscapes-19",), meta=True):
    torch.manual_seed(0)
    model = build_model("hrnet_tiny", num_classes)
    obj = {"state_dict": model.state_dict()}
    if meta:
        obj["meta"] = {"model": "hrnet_tiny", "num_classes": num_classes, "taxonomy": taxonomy, "train_datasets": list(train_datasets)}
    torch.save(obj, path)
    return path


@pytest.fixture()
def world(tmp_path):
    colors = load_class_colors("camvid-11")
    write_dataset(tmp_path / "data", "camvid-11", colour_world(11, 2, 36, 52, colors, seed=3))
    write_dataset(tmp_path / "data", "kitti-19", colour_world(19, 1, 30, 60, load_class_colors("kitti-19"), seed=4))
    return tmp_path


def base_args(world, ckpt):
    return [
        "--config", str(CONFIG), f"model_path={ckpt}", f"data_root={world / 'data'}", "test_h=32", "test_w=32",
        "workers=0", "test_device=cpu",
    ]


def test_one_dataset_writes_summary_table_and_predictions_consistent_with_them(world, capsys):
    ckpt = save_checkpoint(world / "model_final.pth")
    out = world / "eval"
    rc = mseg_test.main(base_args(world, ckpt) + ["dataset=camvid-11", "base_size=36", f"save_folder={out}", "save_predictions=true", "window_batch=3"])
    assert rc == 0
    folder = out / "camvid-11" / "36" / "ss"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["eval_taxonomy"] == "camvid-11" and summary["model"] == "hrnet_tiny" and summary["num_images"] == 2
    assert summary["inference"]["crop_h"] == 32 and summary["inference"]["base_size"] == 36
    # recompute the metric independently from the written predictions and the ground truth
    k = 11
    conf = np.zeros((k, k), np.int64)
    for i in range(2):
        pred = cv2.imread(str(folder / "predictions" / "gray" / "images" / "val" / f"img_{i:03d}.png"), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(str(world / "data" / "Camvid" / "labels" / "val" / f"img_{i:03d}.png"), cv2.IMREAD_UNCHANGED)
        keep = gt != 255
        np.add.at(conf, (gt[keep].astype(np.int64), pred[keep].astype(np.int64)), 1)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore"):
        miou = np.nanmean(np.where(union > 0, tp / union, np.nan))
    assert summary["miou"] == pytest.approx(miou)
    assert summary["pixel_acc"] == pytest.approx(tp.sum() / conf.sum())
    table = (folder / "per_class.md").read_text()
    assert "| id | class | IoU |" in table
    assert "mIoU" in capsys.readouterr().out


def test_zero_shot_benchmark_lists_missing_datasets_and_marks_hmean_incomplete(world, capsys):
    ckpt = save_checkpoint(world / "model_final.pth")
    out = world / "zs"
    rc = mseg_test.main(base_args(world, ckpt) + ["benchmark=zero_shot", "benchmark_base_sizes=[24,30]", f"save_folder={out}"])
    assert rc == 0
    summary = json.loads((out / "zero_shot.json").read_text())
    by_name = {d["dataset"]: d for d in summary["datasets"]}
    assert [d["dataset"] for d in summary["datasets"]] == ["voc2012", "pascal-context-60", "camvid-11", "wilddash-19", "kitti-19", "scannet-20"]
    assert by_name["camvid-11"]["status"] == "ok" and set(by_name["camvid-11"]["miou_by_base_size"]) == {"24", "30"}
    best = by_name["camvid-11"]["best_base_size"]
    assert by_name["camvid-11"]["miou"] == max(by_name["camvid-11"]["miou_by_base_size"].values())
    assert by_name["camvid-11"]["miou_by_base_size"][str(best)] == by_name["camvid-11"]["miou"]
    assert by_name["voc2012"]["status"] == "missing" and "dataset_lists/voc2012/list/val.txt" in by_name["voc2012"]["missing"]
    assert summary["harmonic_mean"] is None and summary["harmonic_mean_complete"] is False
    printed = capsys.readouterr().out
    assert "| Model | VOC mIoU | PC mIoU | CamVid mIoU | WD mIoU | KITTI mIoU | SN mIoU | h. mean |" in printed
    assert "incomplete" in printed and "voc2012: missing (not found at" in printed
    assert (out / "zero_shot.md").read_text() in printed
    # each (dataset, base size) run kept its own results
    assert (out / "kitti-19" / "24" / "ss" / "summary.json").is_file()


def test_benchmark_over_a_chosen_subset_computes_the_harmonic_mean(world, capsys):
    ckpt = save_checkpoint(world / "model_final.pth")
    out = world / "zs2"
    rc = mseg_test.main(base_args(world, ckpt) + ["benchmark=zero_shot", "benchmark_datasets=[kitti-19,camvid-11]", "benchmark_base_sizes=[30]", f"save_folder={out}"])
    assert rc == 0
    summary = json.loads((out / "zero_shot.json").read_text())
    values = [d["miou"] for d in summary["datasets"]]
    assert [d["dataset"] for d in summary["datasets"]] == ["camvid-11", "kitti-19"]  # MSeg's column order
    expected = 0.0 if min(values) == 0 else 2 / (1 / values[0] + 1 / values[1])
    assert summary["harmonic_mean"] == pytest.approx(expected, rel=1e-4)
    assert summary["harmonic_mean_complete"] is True


def test_release_checkpoint_without_meta_defaults_to_universal(world):
    ckpt = save_checkpoint(world / "release.pth", meta=False)
    rc = mseg_test.main(base_args(world, ckpt) + ["dataset=camvid-11", "base_size=36", f"save_folder={world / 'r'}"])
    assert rc == 0
    summary = json.loads((world / "r" / "camvid-11" / "36" / "ss" / "summary.json").read_text())
    assert summary["model_taxonomy"] == "universal" and summary["model"] == "hrnet_tiny"  # width recognised from the state dict


@pytest.mark.parametrize(
    "extra,message",
    [
        (["dataset=camvid-11", "model_taxonomy=naive"], "naive"),
        ([], "dataset=NAME"),
        (["dataset=camvid-11", "benchmark=full"], "zero_shot"),
        (["dataset=camvid-11", "inference_mode=tiles"], "tiles"),
    ],
)
def test_bad_settings_give_a_clear_error(world, capsys, extra, message):
    ckpt = save_checkpoint(world / "model_final.pth")
    assert mseg_test.main(base_args(world, ckpt) + extra) == 2
    assert message in capsys.readouterr().err


def test_checkpoint_class_count_must_fit_the_taxonomy(world, capsys):
    ckpt = save_checkpoint(world / "odd.pth", num_classes=7, meta=False)
    assert mseg_test.main(base_args(world, ckpt) + ["dataset=camvid-11"]) == 2
    assert "7 outputs" in capsys.readouterr().err
