"""The wheel runs: built from the sdist (as ``python -m build`` does), installed into a fresh virtual environment
outside the checkout, its tools and its Python API work from another directory with the packaged configs.

Offline and quick: the build calls the setuptools backend's PEP 517 hooks in this interpreter (``python -m build
--no-isolation`` does the same), and the new environment reaches this one's installed dependencies (torch...)
through a ``.pth`` file, so that only the wheel itself is installed (``--no-deps``).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import mseg_semantic

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "README.md", "mseg_semantic", "config"]

BUILD = """
import sys
from setuptools import build_meta as backend
print(getattr(backend, sys.argv[1])(sys.argv[2]))
"""

API_SCRIPT = """
import importlib.metadata, json, sys
import numpy as np
import mseg_semantic
from mseg_semantic import Segmenter
from mseg_semantic.config import find_config
from mseg_semantic.model import build_model, save_weights

model = build_model("hrnet_tiny", 194)
path = save_weights(model.state_dict(), {"model": "hrnet_tiny", "num_classes": 194, "model_taxonomy": "universal"}, "tiny.pth")
seg = Segmenter.from_pretrained(path, output_taxonomy="cityscapes-19",
                                overrides={"test_h": 32, "test_w": 32, "base_size": 40, "window_batch": 4, "test_device": "cpu"})
result = seg(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))
print(json.dumps({"package": mseg_semantic.__file__, "version": mseg_semantic.__version__,
                  "metadata_version": importlib.metadata.version("mseg_semantic"), "config": str(find_config("demo", "test")),
                  "shape": list(result.labels.shape), "classes": len(result.class_names), "max_label": int(result.labels.max())}))
"""


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """The sdist of a copy of the checkout, then the wheel built from the unpacked sdist (so the sdist is complete)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path / "dist"
    dist.mkdir()
    sdist = dist / _run([sys.executable, "-c", BUILD, "build_sdist", str(dist)], source).stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    unpacked = next((tmp_path / "unpacked").iterdir())
    wheel = dist / _run([sys.executable, "-c", BUILD, "build_wheel", str(dist)], unpacked).stdout.strip().splitlines()[-1]
    return sdist, wheel


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    sdist, wheel = _build(tmp_path)
    assert wheel.name == f"mseg_semantic-{mseg_semantic.__version__}-py3-none-any.whl"  # the version has one source
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ["mseg_semantic/py.typed", "mseg_semantic/configs/test/default_config_360_ss.yaml",
                    "mseg_semantic/configs/train/480_release/mseg-3m.yaml", "mseg_semantic/configs/taxonomy/crosswalk.tsv",
                    "mseg_semantic/taxonomy/data/universal.tsv", "mseg_semantic/taxonomy/data/datasets/datasets.tsv"]:
        assert shipped in names, shipped
    assert not [n for n in names if n.startswith("tests/")]
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB; sdist {sdist.stat().st_size / 1e6:.2f} MB")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    # this environment's dependencies (torch, numpy, ...), after the new one's own site-packages
    (purelib / "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index", str(wheel)], tmp_path)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path / "home"), "MSEG_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    help_text = _run(["mseg-demo", "--help"], outside, env).stdout
    assert "default_config_360_ss" in help_text and "--print-config" in help_text
    printed = _run(["mseg-demo", "--print-config", "output_taxonomy=camvid-11"], outside, env).stdout
    config = yaml.safe_load(printed)
    assert config["TEST"]["base_size"] == 360 and config["TEST"]["output_taxonomy"] == "camvid-11"
    assert f"source: {purelib / 'mseg_semantic' / 'configs' / 'test' / 'default_config_360_ss.yaml'}" in printed
    assert "train/480_release/mseg-3m" in _run(["mseg-train", "--list-configs"], outside, env).stdout

    report = json.loads(_run([str(python), "-c", API_SCRIPT], outside, env).stdout.strip().splitlines()[-1])
    assert report["package"] == str(purelib / "mseg_semantic" / "__init__.py")  # the wheel, not the checkout
    assert report["version"] == report["metadata_version"] == mseg_semantic.__version__
    assert report["config"] == str(purelib / "mseg_semantic" / "configs" / "test" / "demo.yaml")
    assert report["shape"] == [30, 50] and report["classes"] == 19 and report["max_label"] < 19
