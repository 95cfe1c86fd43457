"""Tiny end-to-end training runs: a small synthetic world, hrnet_tiny, 32 x 32 crops, one CPU thread."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY_DATASETS = ["cityscapes-19", "ade20k-150", "mapillary-public65"]


def make_world(root: Path) -> Path:
    from mseg_semantic.data.demo_world import generate

    generate(root, counts={"train": 6}, heldout_counts={"val": 1})
    return root


def write_config(path: Path, world: Path, train: dict | None = None, data: dict | None = None, stages: list | None = None) -> Path:
    config = {
        "DATA": {"dataset": list(TINY_DATASETS), "data_root": str(world), **(data or {})},
        "TRAIN": {
            "model": "hrnet_tiny",
            "train_h": 32,
            "train_w": 32,
            "short_size": 48,
            "batch_size": 6,
            "max_iters": 6,
            "workers": 0,
            "checkpoint_every": 2,
            "keep_checkpoints": 2,
            "print_freq": 1,
            "tensorboard": False,
            "cpu_threads": 1,
            **(train or {}),
        },
    }
    if stages:
        config["STAGES"] = stages
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def train_command(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mseg_semantic.tool.train", "--config", str(config), *overrides]


def run_train(config: Path, *overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config, *overrides), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def run_torchrun(config: Path, nproc: int, *overrides: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """mseg-train under ``torchrun --standalone`` with ``nproc`` processes on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *train_command(config, *overrides)[1:]]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def final_state(output_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=True)["state_dict"]


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
