"""docs/own_dataset.md, run as written: its files are written and its commands run in order on a small generated
dataset (photos and colour masks of the page's classes), with the training commands made tiny (hrnet_tiny, a few
iterations) so that the whole page takes seconds. Each step's result is checked, and the proposal table printed on
the page must be what the command prints.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mseg_semantic.tool import data as mseg_data
from mseg_semantic.tool import demo as mseg_demo
from mseg_semantic.tool import taxonomy as mseg_taxonomy
from mseg_semantic.tool import train as mseg_train

pytestmark = pytest.mark.slow

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own_dataset.md"
TOOLS = {"mseg-taxonomy": mseg_taxonomy.main, "mseg-data": mseg_data.main, "mseg-train": mseg_train.main, "mseg-demo": mseg_demo.main}
TINY_TRAINING = ["model=hrnet_tiny", "max_iters=2", "val_every=2", "val_images=2", "workers=0", "train_h=32", "train_w=32",
                 "short_size=48", "checkpoint_every=2", "cpu_threads=1", "test_h=32", "test_w=32", "base_size=48"]
EXPECTED_CODES = {"propose": 1}  # the page's example has one row to decide (the page says so)
IMAGES = 10


def page_steps(text: str) -> list[tuple[str, str, str]]:
    """(kind, name, content) in page order: ``file`` blocks (a `NAME`: line before the block), ``bash`` commands,
    ``python`` blocks."""
    steps = []
    for match in re.finditer(r"^`([\w./-]+)`:\n\n```[a-z]*\n(.*?)^```", text, re.M | re.S):
        steps.append((match.start(), "file", match.group(1), match.group(2)))
    for match in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for command in match.group(1).replace("\\\n", " ").splitlines():
            if command.strip():
                steps.append((match.start(), "bash", "", command.strip()))
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.M | re.S):
        steps.append((match.start(), "python", "", match.group(1)))
    return [(kind, name, content) for _, kind, name, content in sorted(steps, key=lambda s: s[0])]


def page_palette(text: str) -> dict[int, tuple[int, int, int]]:
    block = re.search(r"^`mydata_raw.tsv`:\n\n```\n(.*?)^```", text, re.M | re.S).group(1)
    rows = [line.split("\t") for line in block.splitlines() if line[:1].isdigit()]
    return {int(r[0]): tuple(int(v) for v in r[2].split()) for r in rows}


def generate_dataset(root: Path, palette: dict[int, tuple[int, int, int]]) -> dict[str, np.ndarray]:
    """Photos and colour masks: rectangles of the page's classes, black (unlabeled) borders; returns the true ids."""
    rng = np.random.default_rng(0)
    colors = np.array([palette[i] for i in sorted(palette)] + [(0, 0, 0)], np.uint8)
    truths = {}
    for i in range(IMAGES):
        ids = np.full((48, 64), len(palette), np.int64)  # unlabeled
        for _ in range(6):
            y, x = rng.integers(0, 40), rng.integers(0, 56)
            ids[y : y + rng.integers(8, 24), x : x + rng.integers(8, 32)] = rng.integers(0, len(palette))
        photo = np.clip(colors[ids].astype(np.int16) + rng.integers(-20, 21, ids.shape + (3,)), 0, 255).astype(np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"img_{i:03d}.jpg"), photo[:, :, ::-1])
        cv2.imwrite(str(root / "masks" / f"img_{i:03d}.png"), colors[ids][:, :, ::-1])
        truths[f"img_{i:03d}"] = np.where(ids == len(palette), 255, ids)
    return truths


def run_command(command: str) -> tuple[int, str]:
    words = shlex.split(command)
    program, args = words[0], words[1:]
    if program == "mseg-train" and "--print-config" not in args:
        args += TINY_TRAINING
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = TOOLS[program](args)
    return code, out.getvalue()


def test_the_own_dataset_page_runs_as_written(tmp_path, monkeypatch):
    text = PAGE.read_text()
    monkeypatch.chdir(tmp_path)
    palette = page_palette(text)
    truths = generate_dataset(tmp_path / "mydata", palette)
    ran = []
    for kind, name, content in page_steps(text):
        if kind == "file":
            (tmp_path / name).write_text(content)
            ran.append(f"file {name}")
            continue
        if kind == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(content, "own_dataset.md", "exec"), {})
            fractions = eval(out.getvalue())  # the printed dict of class fractions
            assert abs(sum(fractions.values()) - 1) < 1e-6 and set(fractions) <= {"road", "sidewalks", "parked cars", "bush",
                                                                                     "sky", "building", "pedestrian", "other"}
            ran.append("python")
            continue
        code, printed = run_command(content)
        subcommand = shlex.split(content)[1:]
        expected = next((c for key, c in EXPECTED_CODES.items() if key in subcommand), 0)
        assert code == expected, f"{content} exited {code}:\n{printed}"
        ran.append(content.split()[0] + " " + content.split()[1])
        if "propose" in subcommand:
            shown = re.search(r"```\n(mydata-raw \(7 classes\).*?)```", text, re.S).group(1)
            assert printed.startswith(shown)  # the table on the page is what the command prints
            edited = "".join(line for line in (tmp_path / "mydata.tsv").read_text().splitlines(True) if not line.startswith("# DECIDE"))
            (tmp_path / "mydata.tsv").write_text(edited)  # what the page asks the reader to do after checking the row
        if "convert" in subcommand:
            for stem, truth in truths.items():
                np.testing.assert_array_equal(cv2.imread(str(tmp_path / "mydata" / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED), truth)
        if "lists" in subcommand:
            assert len((tmp_path / "mydata" / "lists" / "train.txt").read_text().splitlines()) == 8
            assert len((tmp_path / "mydata" / "lists" / "val.txt").read_text().splitlines()) == 2
        if "verify" in subcommand:
            assert "samples without problems: 8 / 8" in printed and "problems: 0" in printed
        if "--print-config" in content:
            assert "# run: datasets mydata; universal taxonomy (194 classes); 600 iterations; batch 8 (8 per process)" in printed
    assert ran.count("python") == 1 and sum(r.startswith("file") for r in ran) == 4
    alone = torch.load(tmp_path / "output" / "mydata" / "model_final.pth", weights_only=True)["meta"]
    mixed = torch.load(tmp_path / "output" / "mydata_mixed" / "model_final.pth", weights_only=True)["meta"]
    assert alone["train_datasets"] == ["mydata"] and mixed["train_datasets"] == ["mydata", "cityscapes-19", "ade20k-150"]
    assert alone["model_taxonomy"] == mixed["model_taxonomy"] == "universal"
    demo_label = cv2.imread(str(tmp_path / "output" / "mydata" / "demo" / "img_000_label.png"), cv2.IMREAD_UNCHANGED)
    assert demo_label.shape == (48, 64) and demo_label.max() < len(palette)  # predictions in the page's 7 classes
