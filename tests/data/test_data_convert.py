"""mseg-data convert (colour-coded labels -> id PNGs) and mseg-data lists (split lists for your own dataset)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from mseg_semantic.data.convert import Palette, convert_image, pack_rgb, read_palette, taxonomy_palette
from mseg_semantic.taxonomy import Catalog, load_class_colors
from mseg_semantic.tool import data as mseg_data


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def read_ids(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def near_colour_palette(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Colours that differ by one in one channel from a neighbour: a nearest-colour or lossy lookup would mix them."""
    rng = np.random.default_rng(seed)
    base = rng.integers(1, 254, size=(n // 2, 3))
    twin = base.copy()
    twin[np.arange(n // 2), rng.integers(0, 3, n // 2)] += 1
    colors = np.concatenate([base, twin]).astype(np.uint8)
    assert len({tuple(c) for c in colors}) == n
    ids = rng.permutation(np.r_[np.arange(n - 1), 255])  # one colour is unlabeled
    return colors, ids.astype(np.uint8)


def test_the_lookup_is_exact_for_colours_one_step_apart():
    colors, ids = near_colour_palette()
    palette = Palette.from_colors([tuple(c) for c in colors], ids.tolist())
    truth_index = np.random.default_rng(1).integers(0, len(colors), size=(37, 53))
    labels, unknown = convert_image(colors[truth_index], palette)
    assert unknown == ""
    np.testing.assert_array_equal(labels, ids[truth_index])
    assert labels.dtype == np.uint8
    assert pack_rgb(np.array([[1, 2, 3]], np.uint8))[0] == (1 << 16) + (2 << 8) + 3


def test_unknown_colours_are_listed_with_pixel_counts_and_nothing_is_mapped():
    colors, ids = near_colour_palette()
    palette = Palette.from_colors([tuple(c) for c in colors], ids.tolist())
    image = colors[np.zeros((10, 10), int)].copy()
    image[0, :7] = (0, 0, 0)
    image[5, :2] = (255, 255, 255)
    labels, unknown = convert_image(image, palette)
    assert labels is None
    assert unknown == "9 pixels in 2 colour(s) not in the palette: (0, 0, 0) x 7, (255, 255, 255) x 2"


def test_palette_files_and_their_errors(tmp_path):
    good = tmp_path / "palette.tsv"
    good.write_text("# my classes\nid\tname\tcolor\n0\troad\t128 64 128\n1\tcar\t#00008e\n255\tunlabeled\t0,0,0\n")
    palette = read_palette(good)
    assert len(palette) == 3 and palette.names == {0: "road", 1: "car", 255: "unlabeled"}
    labels, _ = convert_image(np.array([[[128, 64, 128], [0, 0, 142], [0, 0, 0]]], np.uint8), palette)
    assert labels.tolist() == [[0, 1, 255]]
    for text, message in [
        ("0\troad\t1 2 3\n", "no header line"),
        ("id\tname\n0\troad\n", "the header has no 'color' column"),
        ("id\tname\tcolor\n0\troad\t1 2\n", r"palette.tsv:2: color '1 2': expected 'R G B'"),
        ("id\tname\tcolor\nx\troad\t1 2 3\n", r"palette.tsv:2: id 'x' is not a number"),
        ("id\tname\tcolor\n300\troad\t1 2 3\n", "id 300 is outside 0..255"),
        ("id\tname\tcolor\n0\troad\t1 2 3\n1\tcar\t1 2 3\n", r"colour \(1, 2, 3\) is given to line 2 and line 3"),
    ]:
        bad = tmp_path / "bad" / "palette.tsv"
        bad.parent.mkdir(exist_ok=True)
        bad.write_text(text)
        with pytest.raises(Exception, match=message):
            read_palette(bad)


def test_a_taxonomy_file_is_a_palette(tmp_path):
    taxonomy = tmp_path / "mine.tsv"
    taxonomy.write_text("taxonomy\tmine\nrole\ttrain\nid\tname\tuniversal\tcolor\n0\tpath\tsidewalk_pavement\t10 20 30\n1\ttree\tvegetation\t40 50 60\n")
    palette = read_palette(taxonomy)
    assert sorted(palette.ids.tolist()) == [0, 1] and palette.names[1] == "tree"
    same = taxonomy_palette(Catalog(taxonomy_files=[taxonomy]), "mine")
    np.testing.assert_array_equal(same.keys, palette.keys)
    np.testing.assert_array_equal(same.ids, palette.ids)


def test_convert_a_folder_from_a_taxonomy_keeps_sub_folders(tmp_path, capsys):
    colors = load_class_colors("camvid-11")
    rng = np.random.default_rng(0)
    truths = {}
    for name in ("a/one.png", "b/two.png"):
        label = rng.integers(0, 11, size=(20, 30))
        rgb = colors[label].copy()
        rgb[0, :] = 0  # black: unlabeled
        label[0, :] = 255
        truths[name] = label
        write_rgb(tmp_path / "colour" / name, rgb)
    rgba = np.dstack([colors[np.full((5, 5), 3)], np.full((5, 5), 7, np.uint8)])  # alpha is ignored
    cv2.imwrite(str(tmp_path / "colour" / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    truths["rgba.png"] = np.full((5, 5), 3)
    code = mseg_data.main(["convert", str(tmp_path / "colour"), str(tmp_path / "ids"), "--from-taxonomy", "camvid-11",
                           "--unlabeled-color", "0 0 0"])
    assert code == 0
    for name, truth in truths.items():
        np.testing.assert_array_equal(read_ids(tmp_path / "ids" / name), truth)
    out = capsys.readouterr().out
    assert out.startswith("converted 3 file(s) with 12 palette colours (taxonomy camvid-11); ids present: 0 Building, 1 Tree")
    assert sorted(p.name for p in (tmp_path / "ids").rglob("*")) == ["a", "b", "one.png", "rgba.png", "two.png"]  # no temporaries


def test_files_with_unknown_colours_are_reported_not_written_and_exit_1(tmp_path, capsys):
    (tmp_path / "palette.tsv").write_text("id\tname\tcolor\n0\troad\t128 64 128\n1\tcar\t0 0 142\n")
    write_rgb(tmp_path / "colour" / "good.png", np.full((4, 4, 3), (0, 0, 142), np.uint8))
    bad = np.full((4, 4, 3), (128, 64, 128), np.uint8)
    bad[0, 0] = (128, 64, 127)
    write_rgb(tmp_path / "colour" / "bad.png", bad)
    cv2.imwrite(str(tmp_path / "colour" / "photo.jpg"), bad)
    cv2.imwrite(str(tmp_path / "colour" / "grey.png"), np.zeros((4, 4), np.uint8))
    code = mseg_data.main(["convert", str(tmp_path / "colour"), str(tmp_path / "ids"), "--palette", str(tmp_path / "palette.tsv")])
    assert code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "problems: 3 file(s) not written"
    assert f"{tmp_path / 'colour' / 'bad.png'}: 1 pixels in 1 colour(s) not in the palette: (128, 64, 127) x 1" in out
    assert any(line.startswith(f"{tmp_path / 'colour' / 'photo.jpg'}: .jpg is lossy") for line in out)
    assert any(line.startswith(f"{tmp_path / 'colour' / 'grey.png'}: a single-channel image") for line in out)
    assert [p.name for p in (tmp_path / "ids").iterdir()] == ["good.png"]
    assert read_ids(tmp_path / "ids" / "good.png").tolist() == [[1] * 4] * 4


@pytest.mark.parametrize("args, message", [
    (["--from-taxonomy", "ade20k-150"], r"colour \(.*\) is given to class .* and class"),  # ade20k-150 repeats a colour
    (["--from-taxonomy", "camvid-12"], "camvid-11"),
    (["--from-taxonomy", "camvid-11", "--unlabeled-color", "0 0"], "--unlabeled-color '0 0'"),
    (["--palette", "missing.tsv"], "missing.tsv"),
])
def test_bad_palettes_are_one_line_exit_2(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_rgb(tmp_path / "colour" / "x.png", np.zeros((2, 2, 3), np.uint8))
    assert mseg_data.main(["convert", "colour", "ids", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mseg-data convert: error:")
    assert re.search(message, err), err


def test_converting_into_the_input_folder_is_refused(tmp_path, capsys):
    write_rgb(tmp_path / "colour" / "x.png", np.zeros((2, 2, 3), np.uint8))
    assert mseg_data.main(["convert", str(tmp_path / "colour"), str(tmp_path / "colour"), "--from-taxonomy", "camvid-11"]) == 2
    assert "is the input folder" in capsys.readouterr().err


def test_a_colour_label_given_to_training_points_at_convert(tmp_path):
    from mseg_semantic.data.lists import BadSampleError, read_label

    with pytest.raises(BadSampleError, match="mseg-data convert"):
        read_label(write_rgb(tmp_path / "colour.png", np.zeros((2, 2, 3), np.uint8)))


def test_lists_pair_images_and_labels_and_split_them(tmp_path, capsys):
    root = tmp_path / "mydata"
    (root / "labels").mkdir(parents=True)
    for i in range(10):
        write_rgb(root / "images" / f"f{i:02d}.jpg", np.zeros((4, 4, 3), np.uint8))
        if i != 9:  # f09 has no label
            cv2.imwrite(str(root / "labels" / f"f{i:02d}.png"), np.zeros((4, 4), np.uint8))
    assert mseg_data.main(["lists", "--root", str(root), "--val-fraction", "0.25"]) == 0
    train = (root / "lists" / "train.txt").read_text().splitlines()
    val = (root / "lists" / "val.txt").read_text().splitlines()
    assert len(train) == 7 and len(val) == 2 and not set(train) & set(val)
    assert "images/f00.jpg labels/f00.png" in train + val and not any("f09" in line for line in train + val)
    out = capsys.readouterr().out
    assert "1 image(s) without a label PNG left out" in out
    # the same seed gives the same split; a label without an image is a problem (exit 1)
    cv2.imwrite(str(root / "labels" / "orphan.png"), np.zeros((4, 4), np.uint8))
    assert mseg_data.main(["lists", "--root", str(root), "--val-fraction", "0.25"]) == 1
    assert (root / "lists" / "val.txt").read_text().splitlines() == val
    assert f"problem: {root / 'labels' / 'orphan.png'}: a label PNG without an image" in capsys.readouterr().out
