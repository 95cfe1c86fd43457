"""Split lists, file decoding errors, `mseg-data verify` and ValDataset."""

import cv2
import numpy as np
import pytest

from mseg_semantic.data import BadSampleError, ValDataset, read_label, read_list_file
from mseg_semantic.taxonomy import Catalog
from mseg_semantic.data.verify import verify_split
from mseg_semantic.tool.data import main


def test_list_lines_resolve_against_the_dataset_root(small_world):
    location = Catalog(data_root=small_world).locate("ade20k-150", "val")
    pairs = read_list_file(location)
    assert len(pairs) == 3
    assert all(image.is_file() and label.is_file() for image, label in pairs)
    assert pairs[0][0].parent.parent.parent.parent == small_world / "ADE20K/ADEChallengeData2016"


def test_malformed_and_missing_lists_are_named(tmp_path):
    list_file = tmp_path / "dataset_lists/camvid-11/list/val.txt"
    list_file.parent.mkdir(parents=True)
    list_file.write_text("a.jpg a.png\n\nb.jpg\n")
    with pytest.raises(ValueError, match=r"val.txt:3: expected 'rgb_relpath label_relpath'"):
        read_list_file(Catalog(data_root=tmp_path).locate("camvid-11", "val"))
    with pytest.raises(FileNotFoundError, match=r"test.txt .*camvid-11"):
        read_list_file(Catalog(data_root=tmp_path).locate("camvid-11", "test"))


def test_colour_and_16_bit_labels_are_refused(tmp_path):
    colour = tmp_path / "colour.png"
    cv2.imwrite(str(colour), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(BadSampleError, match="single-channel"):
        read_label(colour)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.zeros((4, 4), np.uint16))
    with pytest.raises(BadSampleError, match="8-bit"):
        read_label(deep)


def test_val_dataset_yields_full_images_in_the_dataset_taxonomy(small_world):
    dataset = ValDataset(Catalog(data_root=small_world), "camvid-11", "test")
    assert len(dataset) == 2
    item = dataset[1]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (144, 192, 3)
    assert item["label"].shape == (144, 192)
    assert set(np.unique(item["label"])) <= set(range(11)) | {255}
    assert item["image_path"].endswith("000001.jpg") and item["label_path"].endswith("000001.png")
    # RGB order: the synthetic sky is blue
    sky = item["label"] == 2
    assert item["image"][sky][:, 2].mean() > item["image"][sky][:, 0].mean() + 30


def test_verify_a_clean_dataset(small_world, capsys):
    report = verify_split(Catalog(data_root=small_world), "mapillary-public65", "train", workers=2)
    assert report.ok and report.num_ok == report.num_samples == 8
    names = report.class_names
    assert report.class_pixels[names.index("Lane Marking - General")] > 0
    assert report.class_pixels[names.index("Curb")] > 0
    assert main(["verify", "--dataset", "mapillary-public65", "--split", "train", "--data-root", str(small_world)]) == 0
    out = capsys.readouterr().out
    assert "samples without problems: 8 / 8" in out and "Lane Marking - General" in out and "problems: 0" in out


def test_verify_reports_every_problem_with_its_file(writable_world, capsys):
    root = writable_world / "Cityscapes"
    pairs = read_list_file(Catalog(data_root=writable_world).locate("cityscapes-19", "train"))
    pairs[0][0].unlink()  # missing image
    pairs[1][0].write_bytes(pairs[1][0].read_bytes()[:40])  # truncated JPEG
    label = cv2.imread(str(pairs[2][1]), cv2.IMREAD_UNCHANGED)
    label[:3, :3] = 77  # an id cityscapes-19 does not have
    cv2.imwrite(str(pairs[2][1]), label)
    cv2.imwrite(str(pairs[3][1]), label[:, :-5])  # size mismatch
    code = main(["verify", "--dataset", "cityscapes-19", "--data-root", str(writable_world), "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "problems: 4" in out and "samples without problems: 4 / 8" in out
    assert f"{pairs[0][0]}: file does not exist" in out
    assert f"{pairs[1][0]}: cannot be decoded" in out
    assert f"{pairs[2][1]}: label ids [77]" in out
    assert f"{pairs[3][1]}: label size" in out and str(root) in out


def test_verify_cli_names_a_missing_list(tmp_path, capsys):
    assert main(["verify", "--dataset", "kitti-19", "--split", "val", "--data-root", str(tmp_path)]) == 2
    assert "kitti-19" in capsys.readouterr().err


def test_mseg_data_reports_an_unwritable_output_in_one_line(capsys):
    assert main(["demo", "--out", "/sys/mseg-demo-world"]) == 2  # nobody may write there, root included
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == ["mseg-data demo: error: /sys/mseg-demo-world: Operation not permitted"]
