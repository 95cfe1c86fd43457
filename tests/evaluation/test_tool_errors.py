"""Bad input to mseg-test / mseg-demo / mseg-export, run as a user would: exit 2, one line on stderr, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_helpers import write_dataset

from mseg_semantic.model import build_model, save_weights

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "test" / "default_config_360_ss.yaml"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    (root / "notes.pth").write_text("these are my notes, not weights\n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    torch.manual_seed(0)
    state = build_model("hrnet_tiny", 194).state_dict()
    save_weights(state, {"model": "hrnet_tiny", "num_classes": 194, "model_taxonomy": "universal"}, root / "good.pth")
    # the meta says 19 classes (an oracle of cityscapes-19) but the classifier has 194 outputs
    save_weights(state, {"model": "hrnet_tiny", "num_classes": 19, "model_taxonomy": "oracle", "train_datasets": ["cityscapes-19"]}, root / "edited.pth")
    # labels still in a raw taxonomy (id 40): a test dataset and a training dataset
    label = np.zeros((32, 32), np.uint8)
    label[4:8, 4:8] = 40
    for dataset in ("camvid-11", "cityscapes-19"):
        write_dataset(root / "data", dataset, [(np.zeros((32, 32, 3), np.uint8), label)])
    return root


def run_tool(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("MSEG_DEBUG", None)
    command = [sys.executable, "-m", f"mseg_semantic.tool.{tool}", "--config", str(CONFIG), "test_device=cpu", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


CASES = [
    ("test", ["model_path=notes.pth", "dataset=camvid-11"], "notes.pth is not a PyTorch checkpoint"),
    ("demo", ["model_path=notes.pth", "input=broken.png"], "notes.pth is not a PyTorch checkpoint"),
    ("export", ["model_path=notes.pth"], "notes.pth is not a PyTorch checkpoint"),
    ("demo", ["model_path=good.pth", "input=broken.png", "base_size=32", "test_h=32", "test_w=32"], "broken.png: cannot be decoded"),
    ("export", ["model_path=good.pth", "test_h=0"], "TEST.test_h=0: must be > 0"),
    ("export", ["model_path=good.pth", "export_opset=5"], "TEST.export_opset=5: must be >= 17"),
    ("test", ["model_path=good.pth", "dataset=camvid-11", "data_root=data", "base_size=32", "test_h=32", "test_w=32"],
     "img_000.png: ground-truth id(s) 40 are not in the camvid-11 taxonomy"),
    ("test", ["model_path=good.pth", "dataset=cityscapes-19", "data_root=data", "base_size=32", "test_h=32", "test_w=32"],
     "img_000.png: label of dataset 'cityscapes-19' holds id(s) 40"),
    ("demo", ["model_path=edited.pth", "input=broken.png", "dataset=cityscapes-19"], "edited.pth: head.classifier.weight has shape (194, 120, 1, 1) but a hrnet_tiny with 19 classes"),
    # a weights file that does not exist: exit 2 as the README and docs/exit_codes.md say
    ("test", ["model_path=no_such.pth", "dataset=camvid-11"], "model_path=no_such.pth: no such file, and not a released model name"),
    ("demo", ["model_path=no_such.pth", "input=broken.png"], "model_path=no_such.pth: no such file, and not a released model name"),
    ("export", ["model_path=no_such.pth"], "model_path=no_such.pth: no such file, and not a released model name"),
]


@pytest.mark.slow
@pytest.mark.parametrize("tool,args,message", CASES, ids=[f"{c[0]}-{c[2].split(':')[0][:24]}" for c in CASES])
def test_bad_input_exits_2_with_one_line_naming_it(files, tool, args, message):
    done = run_tool(tool, *args, cwd=files)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"mseg-{tool}: error: ") and message in lines[0]
    assert "reinit_head" not in lines[0]  # a training option: no advice to use it when evaluating
