from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from eval_helpers import eval_data, inference_settings, ColourOracleNet, TinySegNet, random_image
from mseg_semantic.evaluation.demo import run_demo
from mseg_semantic.evaluation.model_space import OutputSpace
from mseg_semantic.evaluation.visualize import colorize, legend_panel, overlay, present_classes
from mseg_semantic.model import build_model
from mseg_semantic.taxonomy import load_class_colors, load_class_names
from mseg_semantic.tool import demo as mseg_demo

SETTINGS = inference_settings(crop_h=32, crop_w=32, base_size=None, window_batch=8)


def camvid_space():
    return OutputSpace("camvid-11", load_class_names("camvid-11"), load_class_colors("camvid-11"), None)


def read_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :, ::-1]


def blocks_image(colors, h=30, w=44):
    label = np.zeros((h, w), np.int64)
    label[:, w // 2 :] = 3
    label[h // 2 :, : w // 2] = 7
    return colors[label].astype(np.uint8), label


def test_image_outputs_panels_with_taxonomy_colours(tmp_path):
    colors = load_class_colors("camvid-11")
    image, truth = blocks_image(colors)
    cv2.imwrite(str(tmp_path / "scene.png"), image[:, :, ::-1])
    model = ColourOracleNet(colors.astype(np.float32)).eval()
    written = run_demo(model, camvid_space(), SETTINGS, tmp_path / "scene.png", tmp_path / "out", progress=False)
    assert sorted(p.name for p in written) == ["scene_demo.png", "scene_label.png"]
    label = cv2.imread(str(tmp_path / "out" / "scene_label.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(label, truth)
    demo = read_rgb(tmp_path / "out" / "scene_demo.png")
    h, w = image.shape[:2]
    assert demo.shape[0] == h and demo.shape[1] > 3 * w
    np.testing.assert_array_equal(demo[:, :w], image)
    np.testing.assert_array_equal(demo[:, w : 2 * w], colors[label])  # mask colours = the taxonomy's colours
    np.testing.assert_array_equal(demo[:, 2 * w : 3 * w], overlay(image, colors[label]))


def test_folder_is_batched_and_every_image_gets_outputs(tmp_path):
    calls = []

    class Counting(TinySegNet):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, (h, w) in enumerate([(20, 30), (25, 25), (18, 40)]):
        cv2.imwrite(str(folder / f"im{i}.jpg"), random_image(h, w, seed=i))
    (folder / "notes.txt").write_text("not an image")
    space = OutputSpace("toy", [f"c{i}" for i in range(4)], load_class_colors("camvid-11")[:4], None)
    settings = inference_settings(crop_h=32, crop_w=32, window_batch=8)
    written = run_demo(Counting(num_classes=4).eval(), space, settings, folder, tmp_path / "out", batch_size=3, progress=False)
    assert len(written) == 6
    # windows (1 + 1 + 2: the 40-wide image needs two 32-wide windows) and their flips: one forward
    assert calls == [8]
    for i, (h, w) in enumerate([(20, 30), (25, 25), (18, 40)]):
        assert cv2.imread(str(tmp_path / "out" / f"im{i}_label.png"), cv2.IMREAD_UNCHANGED).shape == (h, w)


def test_images_sharing_a_stem_keep_their_own_outputs(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), random_image(20, 30, seed=0))
    cv2.imwrite(str(folder / "a.png"), random_image(24, 26, seed=1))
    cv2.imwrite(str(folder / "b.png"), random_image(22, 22, seed=2))
    space = OutputSpace("toy", [f"c{i}" for i in range(4)], load_class_colors("camvid-11")[:4], None)
    written = run_demo(TinySegNet(num_classes=4).eval(), space, SETTINGS, folder, tmp_path / "out", progress=False, confidence=True)
    names = sorted(p.name for p in written)
    assert len(names) == len(set(names)) == 12
    assert {"a.jpg_label.png", "a.png_label.png", "b_label.png", "a.png_maxprob.png"} <= set(names)
    assert cv2.imread(str(tmp_path / "out" / "a.png_label.png"), cv2.IMREAD_UNCHANGED).shape == (24, 26)


def test_video_in_video_out_with_same_frame_count(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (40, 24))
    for i in range(5):
        writer.write(random_image(24, 40, seed=i))
    writer.release()
    space = OutputSpace("toy", [f"c{i}" for i in range(3)], load_class_colors("camvid-11")[:3], None)
    (out,) = run_demo(TinySegNet(num_classes=3).eval(), space, SETTINGS, path, tmp_path / "out", batch_size=2, progress=False)
    reader = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = reader.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 5
    assert frames[0].shape[0] == 24 and frames[0].shape[1] >= 3 * 40 + 200
    assert reader.get(cv2.CAP_PROP_FPS) == pytest.approx(5.0)
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_unknown_input_type_and_missing_input_are_clear_errors(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown file type"):
        run_demo(TinySegNet(3), camvid_space(), SETTINGS, tmp_path / "x.txt", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_demo(TinySegNet(3), camvid_space(), SETTINGS, tmp_path / "nope.png", tmp_path / "out", progress=False)


def test_colorize_legend_and_present_classes():
    colors = np.array([[10, 20, 30], [200, 100, 0], [1, 2, 3]], np.uint8)
    label = np.array([[0, 1, 1], [255, 1, 2]])
    rgb = colorize(label, colors)
    np.testing.assert_array_equal(rgb[0, 1], [200, 100, 0])
    np.testing.assert_array_equal(rgb[1, 0], [0, 0, 0])
    assert present_classes(label) == [1, 0, 2]
    with pytest.raises(ValueError, match=r"\[5\]"):
        colorize(np.array([[5]]), colors)
    panel = legend_panel([1, 0], ["a", "b"], colors, height=60)
    assert panel.shape == (60, 220, 3)
    assert (panel == colors[1]).all(axis=2).any()  # the swatch of class 1 is drawn
    many = legend_panel(list(range(3)) * 20, ["a", "b", "c"], colors, height=40)
    assert many.shape == (40, 220, 3)


def test_mseg_demo_tool_on_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("hrnet_tiny", 194)
    ckpt = tmp_path / "model_final.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"model": "hrnet_tiny", "num_classes": 194, "taxonomy": "universal", "train_datasets": ["cityscapes-19"]}}, ckpt)
    cv2.imwrite(str(tmp_path / "a.png"), random_image(26, 34))
    config = Path(__file__).resolve().parents[2] / "config" / "test" / "default_config_360_ss.yaml"
    args = ["--config", str(config), f"model_path={ckpt}", "base_size=26", "test_h=32", "test_w=32", "test_device=cpu", f"save_folder={tmp_path / 'o'}"]
    assert mseg_demo.main(args + [f"input={tmp_path / 'a.png'}", "output_taxonomy=kitti-19"]) == 0
    label = cv2.imread(str(tmp_path / "o" / "a_label.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (26, 34) and label.max() < 19
    assert "taxonomy kitti-19" in capsys.readouterr().out
    # a training taxonomy too (users ask for Cityscapes / ADE ids), with confidence maps and probabilities
    extra = ["output_taxonomy=ade20k-150", "save_confidence=true", "save_probabilities=true", "uncovered_classes=ignore"]
    assert mseg_demo.main(args + [f"input={tmp_path / 'a.png'}", *extra]) == 0
    out = capsys.readouterr().out
    assert "taxonomy ade20k-150" in out and "never predicted" in out  # the shared-class rule's losers are listed
    label = cv2.imread(str(tmp_path / "o" / "a_label.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (26, 34) and set(np.unique(label)) <= set(range(150)) | {255}
    maxprob = cv2.imread(str(tmp_path / "o" / "a_maxprob.png"), cv2.IMREAD_UNCHANGED)
    entropy = cv2.imread(str(tmp_path / "o" / "a_entropy.png"), cv2.IMREAD_UNCHANGED)
    assert maxprob.dtype == entropy.dtype == np.uint16 and maxprob.shape == entropy.shape == (26, 34)
    probs = np.load(tmp_path / "o" / "a_probs.npz")["probabilities"]
    assert probs.shape == (150, 26, 34) and probs.dtype == np.uint16
    # where a class is labelled its probability is the largest; its max probability is that value
    ys, xs = np.nonzero(label != 255)
    np.testing.assert_array_equal(probs[label[ys, xs], ys, xs], probs[:, ys, xs].max(0))
    assert mseg_demo.main(args + [f"input={tmp_path / 'a.png'}", "output_taxonomy=universal-x"]) == 2
    assert "universal-x" in capsys.readouterr().err
    assert mseg_demo.main(args) == 2
    assert "input=" in capsys.readouterr().err
