"""config/slurm/mseg_train.sbatch run outside SLURM with stand-ins for srun, torchrun, scancel and scontrol:
the torchrun command it builds, and that it requeues exactly when training stopped early (exit 75, or the
early-warning signal it forwarded), never after a finished or crashed run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "config" / "slurm" / "mseg_train.sbatch"

FAKES = {
    # srun OPTIONS... COMMAND ARGS...: run the command on this one "node"
    "srun": 'while [ "${1#--}" != "$1" ]; do shift; done\nexec "$@"\n',
    # torchrun: record its arguments, then behave as FAKE_TRAIN says; on SIGTERM it exits 1, as the real one
    # does after its training processes stopped with 75
    "torchrun": 'echo "$@" > "$FAKE_DIR/torchrun.args"\necho $$ > "$FAKE_DIR/torchrun.pid"\n'
                'case "$FAKE_TRAIN" in exit:*) exit "${FAKE_TRAIN#exit:}";; esac\n'
                'trap "exit 1" TERM\nwhile true; do sleep 0.05; done\n',
    "scancel": 'echo "$@" >> "$FAKE_DIR/scancel.calls"\nkill -TERM "$(cat "$FAKE_DIR/torchrun.pid")"\n',
    "scontrol": 'if [ "$1" = show ]; then printf "node1\\nnode2\\n"; else echo "$@" >> "$FAKE_DIR/scontrol.calls"; fi\n',
}


@pytest.fixture
def slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path), "SLURM_JOB_ID": "4242",
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_GPUS_ON_NODE": "4"}
    return tmp_path, env


def start(env, behaviour):
    return subprocess.Popen(["bash", str(SCRIPT), "config/train/x.yaml", "/runs/x", "batch_size=64"],
                            env={**env, "FAKE_TRAIN": behaviour}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def calls(directory: Path, name: str) -> list[str]:
    path = directory / f"{name}.calls"
    return path.read_text().splitlines() if path.is_file() else []


def test_builds_the_multi_node_torchrun_command_and_does_not_requeue_a_finished_run(slurm):
    directory, env = slurm
    process = start(env, "exit:0")
    assert process.wait(timeout=30) == 0
    assert (directory / "torchrun.args").read_text().split() == [
        "--nnodes", "2", "--nproc_per_node", "4", "--rdzv_backend", "c10d", "--rdzv_endpoint", "node1:29500",
        "--rdzv_id", "mseg-4242", "-m", "mseg_semantic.tool.train", "--config", "config/train/x.yaml",
        "output_dir=/runs/x", "batch_size=64"]
    assert calls(directory, "scontrol") == []


def test_exit_75_requeues_and_a_crash_does_not(slurm):
    directory, env = slurm
    assert start(env, "exit:75").wait(timeout=30) == 0
    assert calls(directory, "scontrol") == ["requeue 4242"]
    (directory / "scontrol.calls").unlink()
    assert start(env, "exit:1").wait(timeout=30) == 1
    assert calls(directory, "scontrol") == []


def test_the_early_signal_is_forwarded_as_sigterm_and_the_job_requeued(slurm):
    directory, env = slurm
    process = start(env, "run")
    deadline = time.time() + 20
    while not (directory / "torchrun.pid").is_file() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the script is waiting on the step now
    process.send_signal(signal.SIGUSR1)  # what #SBATCH --signal=B:USR1@600 sends
    assert process.wait(timeout=30) == 0, process.stderr.read()
    assert calls(directory, "scancel") == ["--signal=TERM 4242"]
    assert calls(directory, "scontrol") == ["requeue 4242"]


def test_usage_error_without_config_and_output_dir(slurm):
    _, env = slurm
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage: sbatch" in result.stderr
