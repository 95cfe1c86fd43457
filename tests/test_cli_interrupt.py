"""Ctrl-C outside training: exit 130 and one line, no traceback (with --debug / MSEG_DEBUG=1: the traceback too)."""

from __future__ import annotations

from mseg_semantic.tool.cli import run_tool


def _interrupted():
    raise KeyboardInterrupt


def test_ctrl_c_is_exit_130_with_one_line(capsys, monkeypatch):
    monkeypatch.delenv("MSEG_DEBUG", raising=False)
    assert run_tool("mseg-x", _interrupted) == 130
    assert capsys.readouterr().err == "mseg-x: interrupted\n"
    assert run_tool("mseg-x", _interrupted, debug=True) == 130
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("mseg-x: interrupted\n")
