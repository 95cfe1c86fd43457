"""Bad inputs to the data tools: a non-UTF-8 list or config, an empty list, a folder where an image belongs, a
negative --workers. Each is one line naming the file or option (exit 2), or a problem of the check (exit 1)."""

from __future__ import annotations

import pytest

from mseg_semantic.data import BadSampleError, read_list_file
from mseg_semantic.taxonomy import Catalog
from mseg_semantic.data.lists import locate_and_read, read_image_rgb
from mseg_semantic.errors import UserError
from mseg_semantic.tool.data import main

LATIN1 = "straße.jpg straße.png\n".encode("latin-1")  # 0xdf: not UTF-8


def _one_error_line(err: str, prog: str = "mseg-data verify") -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def _camvid_list(root, text: bytes):
    list_file = root / "dataset_lists/camvid-11/list/val.txt"
    list_file.parent.mkdir(parents=True)
    list_file.write_bytes(text)
    return list_file


def test_a_split_list_that_is_not_utf8_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    list_file = _camvid_list(tmp_path, b"a.jpg a.png\n" + LATIN1)
    with pytest.raises(UserError, match=rf"^{list_file}:2: not UTF-8 text \(byte 0xdf at offset 16\); a split list"):
        read_list_file(Catalog(data_root=tmp_path).locate("camvid-11", "val"))
    assert main(["verify", "--dataset", "camvid-11", "--split", "val", "--data-root", str(tmp_path)]) == 2
    assert f"{list_file}:2: not UTF-8 text" in _one_error_line(capsys.readouterr().err)


def test_a_config_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_bytes(b"DATA:\n  data_root: /data/\xe9t\xe9\n")
    _camvid_list(tmp_path, b"a.jpg a.png\n")
    assert main(["verify", "--dataset", "camvid-11", "--split", "val", "--config", str(config)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{config}:2: not UTF-8 text (byte 0xe9 at offset 25); a YAML config must be a UTF-8 text file" in line


def test_verify_reports_an_empty_list_as_a_problem_and_exits_1(tmp_path, capsys):
    list_file = _camvid_list(tmp_path, b"\n\n")
    assert main(["verify", "--dataset", "camvid-11", "--split", "val", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "problems: 1" in out and f"  {list_file}: names no samples (an empty split list)" in out


def test_an_empty_split_list_is_an_error_naming_the_list_file(tmp_path):
    list_file = _camvid_list(tmp_path, b"")
    with pytest.raises(UserError, match=rf"split list {list_file} of dataset 'camvid-11' names no samples"):
        locate_and_read(Catalog(data_root=tmp_path), "camvid-11", "val")


def test_a_folder_in_place_of_an_image_is_called_a_folder(tmp_path):
    (tmp_path / "frame.png").mkdir()
    with pytest.raises(BadSampleError, match=rf"{tmp_path / 'frame.png'}: is a directory, not an image file"):
        read_image_rgb(tmp_path / "frame.png")
    with pytest.raises(BadSampleError, match="file does not exist"):
        read_image_rgb(tmp_path / "nowhere.png")


def test_negative_workers_are_refused_naming_the_option(tmp_path, capsys):
    _camvid_list(tmp_path, b"a.jpg a.png\n")
    assert main(["verify", "--dataset", "camvid-11", "--split", "val", "--data-root", str(tmp_path), "--workers", "-3"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--workers -3: must be 0 (check in this process) or a number of worker processes" in line


def _break_every_label(world) -> None:
    list_file = world / "dataset_lists/cityscapes-19/list/train.txt"
    for line in list_file.read_text().splitlines():
        (world / "Cityscapes" / line.split()[1]).write_bytes(b"not a png")


def _skip_mode_error(world, converter) -> str:
    from mseg_semantic.config import load_config
    from mseg_semantic.data import build_train_loader

    cfg = load_config(None, [f"data_root={world}", "batch_size=2", "train_h=32", "train_w=32", "short_size=40", "on_bad_sample=skip"])
    loader = build_train_loader(cfg, ["cityscapes-19"], converter)
    with pytest.raises(BadSampleError) as caught:
        next(iter(loader))
    return str(caught.value)


def test_a_dataset_that_is_all_bad_under_skip_says_the_dataset_is_broken(writable_world, universal_converter):
    _break_every_label(writable_world)
    message = _skip_mode_error(writable_world, universal_converter)
    assert "samples of cityscapes-19 in a row were bad, replacements included: the dataset is broken" in message
    assert "mseg-data verify --dataset cityscapes-19" in message and "cannot be decoded" in message


def test_a_dataset_that_is_all_bad_under_skip_does_not_suggest_skip(writable_world, universal_converter):
    _break_every_label(writable_world)
    assert "on_bad_sample=skip replaces" not in _skip_mode_error(writable_world, universal_converter)
