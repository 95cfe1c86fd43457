"""The Python API (mseg_semantic.Segmenter): the same labels as mseg-demo, any image type, batches, folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from eval_helpers import random_image
from mseg_semantic import Segmentation, Segmenter
from mseg_semantic.errors import UserError
from mseg_semantic.model import build_model, save_weights
from mseg_semantic.taxonomy import load_class_names
from mseg_semantic.tool import demo as mseg_demo

REPO = Path(__file__).resolve().parents[2]
TINY = {"test_h": 32, "test_w": 32, "base_size": 40, "window_batch": 4, "test_device": "cpu", "test_precision": "fp32"}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)  # a small model on a shared 2-core machine (conftest restores the setting)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("hrnet_tiny", 194)
    with torch.no_grad():  # distinct classes win in distinct places: a random head would give one class everywhere
        model.head.classifier.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("api") / "tiny.pth"
    return save_weights(model.state_dict(), {"model": "hrnet_tiny", "num_classes": 194, "model_taxonomy": "universal"}, path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w) in enumerate([(30, 50), (41, 37), (64, 48)]):
        rgb = cv2.GaussianBlur(random_image(h, w, seed=i), (7, 7), 0)  # smooth: regions, not salt
        cv2.imwrite(str(folder / f"img{i}.png"), rgb[:, :, ::-1])
        paths.append(folder / f"img{i}.png")
    return paths


def _demo_labels(checkpoint: Path, image: Path, out: Path, taxonomy: str) -> np.ndarray:
    overrides = [f"{k}={v}" for k, v in TINY.items()]
    assert mseg_demo.main([f"model_path={checkpoint}", f"input={image}", f"save_folder={out}",
                           f"output_taxonomy={taxonomy}", *overrides]) == 0
    return cv2.imread(str(out / f"{image.stem}_label.png"), cv2.IMREAD_UNCHANGED)


def test_labels_equal_mseg_demo_for_a_path_an_array_and_a_pil_image(checkpoint, images, tmp_path):
    seg = Segmenter.from_pretrained(checkpoint, output_taxonomy="cityscapes-19", overrides=TINY)
    assert seg.class_names == load_class_names("cityscapes-19") and seg.taxonomy == "cityscapes-19"
    assert seg.device == torch.device("cpu")
    path = images[0]
    result = seg(str(path))
    assert isinstance(result, Segmentation) and result.labels.dtype == np.uint8 and result.labels.shape == (30, 50)
    expected = _demo_labels(checkpoint, path, tmp_path / "demo", "cityscapes-19")
    np.testing.assert_array_equal(result.labels, expected)
    assert len(np.unique(expected)) > 1  # a test that could tell two different procedures apart
    rgb = cv2.imread(str(path))[:, :, ::-1].copy()
    np.testing.assert_array_equal(seg(rgb).labels, expected)
    np.testing.assert_array_equal(seg(Image.fromarray(rgb)).labels, expected)
    np.testing.assert_array_equal(seg(path).labels, expected)
    assert result.class_names == seg.class_names and result.colorized().shape == (30, 50, 3)
    assert abs(sum(result.class_fractions().values()) - 1.0) < 1e-9


def test_the_models_own_classes_by_default_and_another_config(checkpoint, images):
    seg = Segmenter.from_pretrained(checkpoint, config="default_config_360_ms", overrides=TINY)
    assert seg.taxonomy == "universal" and len(seg.class_names) == 194
    assert seg.settings.scales == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # the packaged multi-scale config was read
    assert seg(images[1]).labels.shape == (41, 37)


def test_batches_give_the_labels_of_single_images(checkpoint, images, monkeypatch):
    from mseg_semantic.evaluation import api

    one = Segmenter.from_pretrained(checkpoint, "camvid-11", overrides=TINY, batch_size=1)
    two = Segmenter.from_pretrained(checkpoint, "camvid-11", overrides=TINY, batch_size=2)
    singles = [one(path).labels for path in images]
    calls = []
    original = api.predict_image_probabilities
    monkeypatch.setattr(api, "predict_image_probabilities", lambda engine, batch, *a: (calls.append(len(batch)), original(engine, batch, *a))[1])
    batched = two(images)
    assert calls == [2, 1]  # two images per inference call, then the last one
    assert isinstance(batched, list) and len(batched) == 3
    for single, result in zip(singles, batched):
        np.testing.assert_array_equal(result.labels, single)


def test_probabilities_and_confidence(checkpoint, images):
    seg = Segmenter.from_pretrained(checkpoint, "camvid-11", overrides=TINY)
    plain = seg(images[2])
    full = seg(images[2], probabilities=True, confidence=True)
    k = len(seg.class_names)
    assert full.probabilities.shape == (k, 64, 48) and full.probabilities.dtype == np.float32
    np.testing.assert_allclose(full.probabilities.sum(0), 1.0, atol=1e-5)  # drop: renormalised over the output classes
    np.testing.assert_array_equal(full.labels, full.probabilities.argmax(0))
    np.testing.assert_array_equal(full.labels, plain.labels)
    np.testing.assert_allclose(full.confidence, full.probabilities.max(0), atol=1e-6)
    assert full.entropy.shape == (64, 48) and 0 <= full.entropy.min() and full.entropy.max() <= 1
    assert plain.probabilities is None and plain.confidence is None


def test_predict_folder_writes_the_demos_label_pngs(checkpoint, images, tmp_path):
    seg = Segmenter.from_pretrained(checkpoint, "cityscapes-19", overrides=TINY, batch_size=2)
    written = seg.predict_folder(images[0].parent, out=tmp_path / "masks", colored=True)
    assert sorted(p.name for p in written) == ["img0.png", "img0_color.png", "img1.png", "img1_color.png", "img2.png", "img2_color.png"]
    for path in images:
        mask = cv2.imread(str(tmp_path / "masks" / path.name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, _demo_labels(checkpoint, path, tmp_path / "demo", "cityscapes-19"))
    colour = cv2.imread(str(tmp_path / "masks" / "img0_color.png"))[:, :, ::-1]
    np.testing.assert_array_equal(colour, seg(images[0]).colorized())


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8, 3), np.float32), "dtype float32: expected uint8"),
    (np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\)"),
    ([[1, 2], [3, 4]], None),  # a list is a batch: its items are checked one by one
    (42, "cannot segment a int"),
])
def test_bad_images_are_one_line_errors(checkpoint, image, message):
    seg = Segmenter.from_pretrained(checkpoint, overrides=TINY)
    with pytest.raises(UserError, match=message or "cannot segment a list"):
        seg(image)


def test_bad_options_name_the_key(checkpoint, tmp_path):
    with pytest.raises(UserError, match="output_taxonomy"):
        Segmenter.from_pretrained(checkpoint, "cityscapes-91", overrides=TINY)
    with pytest.raises(UserError, match="bsae_size"):
        Segmenter.from_pretrained(checkpoint, overrides={"bsae_size": 3})
    with pytest.raises(UserError, match="not a folder"):
        Segmenter.from_pretrained(checkpoint, overrides=TINY).predict_folder(tmp_path / "none", tmp_path / "out")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_by_default_when_there_is_one(checkpoint, images):
    seg = Segmenter.from_pretrained(checkpoint, overrides={k: v for k, v in TINY.items() if k != "test_device"})
    assert seg.device.type == "cuda"
    assert seg(images[0]).labels.shape == (30, 50)


def test_importing_the_package_does_not_import_torch():
    code = "import sys, mseg_semantic; assert 'torch' not in sys.modules, 'torch imported'; print(mseg_semantic.__version__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == __import__("mseg_semantic").__version__
