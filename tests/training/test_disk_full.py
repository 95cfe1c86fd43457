"""A full disk while mseg-train writes a checkpoint or model_final.pth: exit 2 with one line naming the file (also
in train.log), no temporary left behind, nothing lost: the same command then resumes and ends bit-exact.

The fault is injected without root: the run goes through ``main(argv)`` in a child process whose atomic writer
(``mseg_semantic.atomic.open``) hands out a file that fails with ENOSPC at its k-th write."""

from __future__ import annotations

import subprocess
import sys

import pytest

from train_helpers import REPO, assert_states_equal, final_state, make_world, run_train, subprocess_env, write_config

INJECT = """
import errno, os, sys
import mseg_semantic.atomic as atomic
from mseg_semantic.tool.train import main

target, fail_at = sys.argv[1], int(sys.argv[2])
real_open = open


class FullDisk:
    '''A file whose fail_at-th write fails as on a full file system.'''

    def __init__(self, handle):
        self.handle, self.writes = handle, 0

    def write(self, data):
        self.writes += 1
        if self.writes >= fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def failing_open(path, mode="r", *args, **kwargs):
    handle = real_open(path, mode, *args, **kwargs)
    return FullDisk(handle) if "w" in mode and os.path.basename(path).startswith("." + target + ".") else handle


atomic.open = failing_open
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder / "tiny.yaml", world)
    done = run_train(config, f"output_dir={folder / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    return config, final_state(folder / "run")


@pytest.mark.slow
@pytest.mark.parametrize("target,fail_at", [("iter_00000004.pth", 3), ("model_final.pth", 2)])
def test_a_full_disk_while_writing_is_one_line_and_the_rerun_resumes_exactly(reference, tmp_path, target, fail_at):
    config, expected = reference
    out = tmp_path / "run"
    failed = subprocess.run([sys.executable, "-c", INJECT, target, str(fail_at), "--config", str(config), f"output_dir={out}"],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("mseg-train: error: ")]
    path = out / "checkpoints" / target if target.startswith("iter_") else out / target
    assert errors == [f"mseg-train: error: {path}: cannot be written: no space left on device (the previous file, if any, "
                      f"is unchanged; free some space and run the command again)"], failed.stderr[-3000:]
    assert errors[0] in (out / "train.log").read_text()
    assert not list(out.rglob(".*.tmp*")), "a temporary was left behind"
    assert not path.exists() and not (out / "model_final.pth").exists()

    resumed = run_train(config, f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_at = "iteration 2" if target.startswith("iter_") else "iteration 6"
    assert f"resuming from {out / 'checkpoints'}" in resumed.stderr and resumed_at in resumed.stderr
    assert_states_equal(final_state(out), expected)
