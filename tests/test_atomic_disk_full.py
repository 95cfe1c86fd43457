"""A full disk or a spent quota while writing: one error naming the final file (exit 2), the temporary removed,
the previous file unchanged; train.log and metrics.jsonl do not turn it into tracebacks either."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from mseg_semantic import atomic
from mseg_semantic.atomic import DiskFullError, atomic_write, atomic_write_text, link_or_copy_atomic, renamed_into_place
from mseg_semantic.tool.cli import run_tool


def _full(code=errno.ENOSPC):
    return OSError(code, os.strerror(code))


def _torch_like_writer(handle):
    """torch.save reports a failed write as a RuntimeError raised while handling the OSError."""
    handle.write(b"partial")
    try:
        raise _full()
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 64 vs 0")


def test_a_full_disk_names_the_final_file_removes_the_temporary_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"previous")
    with pytest.raises(DiskFullError) as caught:
        atomic_write(path, _torch_like_writer, durable=True)
    assert str(caught.value).startswith(f"{path}: cannot be written: no space left on device")
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_final.pth"]


def test_a_spent_quota_says_so_and_other_os_errors_pass_unchanged(tmp_path):
    def quota(handle):
        raise _full(errno.EDQUOT)

    with pytest.raises(DiskFullError, match="disk quota exceeded"):
        atomic_write(tmp_path / "a.json", quota)

    def broken(handle):
        raise _full(errno.EIO)

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "b.json", broken)
    assert not isinstance(caught.value, DiskFullError) and caught.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_renamed_into_place_and_link_or_copy_report_a_full_disk_too(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    with pytest.raises(DiskFullError, match=f"{target}: cannot be written"):
        with renamed_into_place(target) as tmp:
            tmp.write_bytes(b"half")
            raise _full()
    assert list(tmp_path.iterdir()) == []

    source = atomic_write_text(tmp_path / "iter_00000002.pth", "weights")

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "no hard links here")

    monkeypatch.setattr(atomic, "_copy", lambda source, target: (_ for _ in ()).throw(_full()))
    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(DiskFullError, match=f"{tmp_path / 'last.pth'}: cannot be written"):
        link_or_copy_atomic(source, tmp_path / "last.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_00000002.pth"]


def test_the_tool_shell_gives_a_full_disk_exit_2_and_one_line(capsys):
    def body():
        raise _full()

    assert run_tool("mseg-x", body) == 2
    err = capsys.readouterr().err
    assert err == "mseg-x: error: [Errno 28] No space left on device\n"


def test_train_log_on_a_full_disk_warns_once_instead_of_a_traceback_per_line(tmp_path, capsys):
    from mseg_semantic.training.report import PACKAGE_LOGGER, setup_logging

    log = setup_logging(tmp_path / "train.log", is_main=True)
    handler = next(h for h in logging.getLogger(PACKAGE_LOGGER).handlers if isinstance(h, logging.FileHandler))

    class FullStream:
        def write(self, text):
            raise _full()

        def flush(self):
            pass

    handler.stream = FullStream()
    try:
        for step in range(3):
            log.info(f"iter {step}")
    finally:
        handler.stream = None
        setup_logging(None, is_main=True)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {tmp_path / 'train.log'}: No space left on device; its lines are lost until there is "
                        f"space (the console still has them)"]
    assert err.count("iter ") == 3  # the console still has every line


def test_metrics_jsonl_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import builtins

    import torch

    from mseg_semantic.training import report

    reporter = report.TrainingReporter(tmp_path, True, 0, 10, 2, torch.device("cpu"), 1, tensorboard=False, show_progress=False)
    real_open = builtins.open

    def full_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(report.METRICS_FILE):
            raise _full()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(DiskFullError, match=f"{tmp_path / report.METRICS_FILE}: cannot be written: no space left"):
        reporter.write_scalars(2, {"val/miou": 0.5})
    monkeypatch.undo()
    reporter.close()
