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
    assert by_name["camvid-11"]["status"] == "ok" and set(by_name["camvid-11"]["miou_mseg_by_base_size"]) == {"24", "30"}
    assert summary["table_formula"] == "miou_mseg" and summary["partial"] is None
    for formula, best_key in (("miou_mseg", "best_base_size"), ("miou", "miou_best_base_size")):
        row = by_name["camvid-11"]
        assert row[formula] == max(row[f"{formula}_by_base_size"].values())
        assert row[f"{formula}_by_base_size"][str(row[best_key])] == row[formula]
    # the table's numbers are MSeg's formula, read back from the per-run summaries
    run = json.loads((out / "camvid-11" / str(by_name["camvid-11"]["best_base_size"]) / "ss" / "summary.json").read_text())
    assert by_name["camvid-11"]["miou_mseg"] == pytest.approx(100 * run["miou_mseg"], abs=1e-3)
    assert (out / "zero_shot.png").is_file() and (out / "camvid-11" / "24" / "ss" / "confusion.png").is_file()
    assert (out / "camvid-11" / "24" / "ss" / "per_class_iou.png").is_file()
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
    values = [d["miou_mseg"] for d in summary["datasets"]]
    assert [d["dataset"] for d in summary["datasets"]] == ["camvid-11", "kitti-19"]  # MSeg's column order
    expected = 0.0 if min(values) == 0 else 2 / (1 / values[0] + 1 / values[1])
    assert summary["harmonic_mean"] == pytest.approx(expected, abs=1e-3)  # the JSON rounds to 4 decimals
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


def test_benchmark_with_every_dataset_missing_is_an_error_naming_the_paths(world, capsys):
    ckpt = save_checkpoint(world / "model_final.pth")
    rc = mseg_test.main(base_args(world, ckpt) + ["benchmark=zero_shot", "benchmark_datasets=[voc2012,scannet-20]", f"save_folder={world / 'none'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "none of the 2 datasets is on disk" in err and "dataset_lists/voc2012/list/val.txt" in err
    assert len(err.strip().splitlines()) == 1 and not (world / "none" / "zero_shot.json").exists()


def test_a_slice_of_each_list_is_marked_partial_everywhere(world, capsys):
    ckpt = save_checkpoint(world / "model_final.pth")
    out = world / "part"
    rc = mseg_test.main(base_args(world, ckpt) + ["benchmark=zero_shot", "benchmark_datasets=[camvid-11]", "benchmark_base_sizes=[30]",
                                                  "index_step=1", f"save_folder={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "**PARTIAL**" in printed and (out / "zero_shot.md").read_text().startswith("**PARTIAL**")
    assert "index_step=1" in json.loads((out / "zero_shot.json").read_text())["partial"]
    run = out / "camvid-11" / "30" / "ss"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["num_images"] == 1 and summary["images_in_list"] == 2 and "0..0 of the 2" in summary["partial"]
    assert "**PARTIAL**" in (run / "per_class.md").read_text()
    full = world / "full"
    assert mseg_test.main(base_args(world, ckpt) + ["dataset=camvid-11", "base_size=30", f"save_folder={full}"]) == 0
    assert json.loads((full / "camvid-11" / "30" / "ss" / "summary.json").read_text())["partial"] is None


def test_output_taxonomy_scores_a_training_dataset_in_its_own_ids(world, capsys):
    write_dataset(world / "data", "cityscapes-19", colour_world(19, 1, 30, 40, load_class_colors("cityscapes-19"), seed=5))
    ckpt = save_checkpoint(world / "model_final.pth")
    out = world / "own"
    rc = mseg_test.main(base_args(world, ckpt) + ["dataset=cityscapes-19", "base_size=30", "output_taxonomy=cityscapes-19",
                                                  "save_predictions=true", "save_confidence=true", f"save_folder={out}"])
    assert rc == 0
    summary = json.loads((out / "cityscapes-19" / "30" / "ss" / "summary.json").read_text())
    assert summary["eval_taxonomy"] == "cityscapes-19" and len(summary["per_class"]) == 19
    assert (out / "cityscapes-19" / "30" / "ss" / "predictions" / "confidence" / "images" / "val" / "img_000_entropy.png").is_file()
    capsys.readouterr()
    assert mseg_test.main(base_args(world, ckpt) + ["benchmark=zero_shot", "output_taxonomy=cityscapes-19"]) == 2
    assert "unset output_taxonomy" in capsys.readouterr().err


USER_TEST_TAXONOMY = """taxonomy\tmy-street-3
role\ttest
id\tname\tuniversal\tcolor
0\tflat\troad, sidewalk_pavement\t128 64 128
1\tvehicle\tcar, bus, truck\t0 0 142
2\tgreen\tvegetation, terrain\t107 142 35
"""


def test_user_taxonomy_file_from_the_command_line(world, capsys):
    tsv = world / "street.tsv"
    tsv.write_text(USER_TEST_TAXONOMY)
    root = world / "data" / "street"
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    label = rng.integers(0, 3, (24, 32)).astype(np.uint8)
    cv2.imwrite(str(root / "img" / "a.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "img" / "a_label.png"), label)
    lists = world / "data" / "dataset_lists" / "my-street-3" / "list"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("img/a.png img/a_label.png\n")
    out = world / "street_eval"
    rc = mseg_test.main(base_args(world, save_checkpoint(world / "model_final.pth")) + [
        f"taxonomy_files=[{tsv}]", "dataset=my-street-3", "dataset_roots={my-street-3: street}", "base_size=24", f"save_folder={out}"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "my-street-3" / "24" / "ss" / "summary.json").read_text())
    assert [c["name"] for c in summary["per_class"]] == ["flat", "vehicle", "green"] and summary["num_pixels"] == 24 * 32
