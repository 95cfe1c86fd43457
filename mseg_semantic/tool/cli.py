"""The shell every command-line tool runs in: one exit-code policy, one-line errors, ``--debug`` for tracebacks.

Policy (:mod:`mseg_semantic.errors`): a :class:`~mseg_semantic.errors.UserError` or an OS error about a named
file exits 2 with one line ``PROG: error: MESSAGE``; an exception class with its own ``exit_code`` (a non-finite
loss, a preempted run) exits with that code; Ctrl-C exits 130 without a traceback; anything else is a bug and
keeps its traceback. ``--debug`` or ``MSEG_DEBUG=1`` prints the traceback in every case. While a training run
logs to its ``train.log``, the same line goes there too.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Callable, Sequence

from mseg_semantic.atomic import DISK_FULL_ERRNOS
from mseg_semantic.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED

__all__ = ["add_debug_flag", "config_tool", "error_exit_code", "run_tool"]

DEBUG_ENV = "MSEG_DEBUG"


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help=f"show the Python traceback of an error (or set {DEBUG_ENV}=1)")
    return parser


def error_exit_code(exc: BaseException) -> int | None:
    """The exit code the policy gives ``exc``; None for a bug (an unexpected exception)."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, OSError) and (exc.filename is not None or isinstance(exc, (FileNotFoundError, PermissionError))):
        return EXIT_BAD_INPUT  # a path the user gave cannot be read or written
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return EXIT_BAD_INPUT  # a full disk where no atomic writer named the file: still the user's to fix
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        target = f" -> {exc.filename2}" if exc.filename2 else ""
        return f"{exc.filename}{target}: {exc.strerror}"
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _to_log_files(message: str) -> None:
    """The error line into every log file the package logger writes (a training run's train.log)."""
    logger = logging.getLogger("mseg_semantic")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_tool(prog: str, body: Callable[[], object], debug: bool = False) -> int:
    """Run ``body`` under the policy; returns the process exit code (``body``'s own when it returns an int, else 0)."""
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        result = body()
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `mseg-taxonomy list | head`
        return 0
    except Exception as exc:  # noqa: BLE001 - this is the one place that decides what an exception means
        code = error_exit_code(exc)
        if code is None:
            raise
        if debug:
            traceback.print_exc()
        message = f"{prog}: error: {describe(exc)}"
        print(message, file=sys.stderr)
        _to_log_files(message)
        return code


def config_tool(prog: str, description: str, example: str, overrides_help: str,
                body: Callable, argv: Sequence[str] | None = None) -> int:
    """``PROG --config FILE [key=value ...] [--debug]``: load the config, then ``body(cfg)`` under the policy."""
    from mseg_semantic.config import load_config

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help=f"YAML config, e.g. {example}")
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    add_debug_flag(parser)
    args = parser.parse_intermixed_args(argv)
    return run_tool(prog, lambda: body(load_config(args.config, args.overrides)), args.debug)
