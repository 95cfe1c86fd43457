"""mseg-test and mseg-demo report progress also when stderr is not a terminal (a log file, a pipe): a line every
few images with the count, the rate and the ETA, and a closing line; a terminal keeps its bar."""

from __future__ import annotations

import io
import re

import cv2
import pytest

from eval_helpers import colour_world, random_image, write_dataset
from mseg_semantic.evaluation.progress import Progress
from mseg_semantic.taxonomy import load_class_colors
from mseg_semantic.tool import demo as mseg_demo
from mseg_semantic.tool import test as mseg_test
from test_tool_test import CONFIG, save_checkpoint

LINE = re.compile(r"^(?P<desc>.+): (?P<done>\d+)/(?P<total>\d+) images \(\d+%\), [\d.]+ images/s, ETA [\d.]+ (s|min|h)(, pixel_acc [\d.]+)?$")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_every_n_images_with_rate_and_eta_then_a_closing_line():
    stream = io.StringIO()
    progress = Progress(5, "camvid-11 val", stream=stream, every_images=2, every_seconds=3600)
    for _ in range(5):
        progress.update(1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [LINE.match(line).group("done") for line in lines[:-1]] == ["2", "4"]
    assert re.fullmatch(r"camvid-11 val: 5/5 images in \d+ s \([\d.]+ images/s\)", lines[-1])


def test_a_line_after_every_seconds_even_between_counts_and_none_when_disabled():
    stream = io.StringIO()
    progress = Progress(1000, "demo", stream=stream, every_images=500, every_seconds=0.0)
    progress.update(1, pixel_acc="0.5")
    assert stream.getvalue().startswith("demo: 1/1000 images (0%),") and stream.getvalue().rstrip().endswith("pixel_acc 0.5")
    quiet = io.StringIO()
    silent = Progress(3, "x", stream=quiet, enabled=False, every_seconds=0.0)
    silent.update(3)
    silent.close()
    assert quiet.getvalue() == ""


def test_a_terminal_gets_the_bar_not_lines():
    stream = Terminal()
    progress = Progress(3, "demo", stream=stream, every_seconds=0.0)
    progress.update(3)
    progress.close()
    assert "demo" in stream.getvalue() and " ETA " not in stream.getvalue() and "\r" in stream.getvalue()


@pytest.fixture()
def world(tmp_path):
    write_dataset(tmp_path / "data", "camvid-11", colour_world(11, 3, 36, 52, load_class_colors("camvid-11"), seed=3))
    return tmp_path


def test_mseg_test_writes_progress_lines_when_stderr_is_not_a_terminal(world, capsys):
    ckpt = save_checkpoint(world / "model_final.pth")
    args = ["--config", str(CONFIG), f"model_path={ckpt}", f"data_root={world / 'data'}", "test_h=32", "test_w=32",
            "workers=0", "test_device=cpu", "dataset=camvid-11", "base_size=36", f"save_folder={world / 'eval'}"]
    assert mseg_test.main(args) == 0
    lines = capsys.readouterr().err.splitlines()
    steps = [LINE.match(line) for line in lines if LINE.match(line)]
    assert [(m.group("desc"), m.group("done"), m.group("total")) for m in steps] == \
        [("camvid-11 val", "1", "3"), ("camvid-11 val", "2", "3")]
    assert any(re.match(r"camvid-11 val: 3/3 images in ", line) for line in lines)


def test_mseg_demo_writes_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "model_final.pth")
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.jpg"), random_image(24, 32, seed=i))
    args = ["--config", str(CONFIG), f"model_path={ckpt}", f"input={folder}", f"save_folder={tmp_path / 'out'}",
            "test_h=32", "test_w=32", "base_size=32", "test_device=cpu"]
    assert mseg_demo.main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert [LINE.match(line).group("done") for line in err if LINE.match(line)] == ["1", "2"]
    assert any(line.startswith("demo: 3/3 images in ") for line in err)
