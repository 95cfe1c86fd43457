"""benchmarks/gpu_check.py's machinery: a GPU lease is short, so a stuck job must cost only its own time limit and
a spent budget must leave a complete, readable result file."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_a_timed_out_job_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    child = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('{{\"partial\": 1}}', flush=True); time.sleep(60)")
    started = time.perf_counter()
    returncode, stdout, _ = gpu_check.run_job([sys.executable, "-c", child], dict(os.environ), limit=3)
    assert returncode is None and time.perf_counter() - started < 20
    assert gpu_check.parse_results(stdout) == [{"partial": 1}]  # what it printed before the limit is kept
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # killed with the group; give the kernel a moment to reap it
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {grandchild} outlived its job's time limit")


def test_results_are_read_from_json_lines_and_from_one_indented_object():
    assert gpu_check.parse_results('noise\n{"a": 1}\n{"b": 2}\n') == [{"a": 1}, {"b": 2}]
    assert gpu_check.parse_results('warming up\n{\n "c": [1,\n 2]\n}\n') == [{"c": [1, 2]}]
    assert gpu_check.parse_results("Traceback (most recent call last):\n  ...") == []


def test_a_spent_budget_skips_the_remaining_jobs_and_still_writes_the_file(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--quick", "--budget", "0", "--only", "numerics", "loader_fed", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["job"] for r in results] == ["numerics", "loader_fed"]
    assert all("budget" in r["skipped"] for r in results)
    assert not list(tmp_path.glob("*.part"))


def test_an_unknown_job_name_is_refused_with_the_known_ones(capsys):
    try:
        gpu_check.main(["--quick", "--only", "numerix", "--out", os.devnull])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("an unknown job name was accepted")
    err = capsys.readouterr().err
    assert "numerix" in err and "numerics" in err
