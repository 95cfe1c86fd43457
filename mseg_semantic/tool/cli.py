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
from mseg_semantic.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, UserError

__all__ = ["add_debug_flag", "config_tool", "error_exit_code", "inference_plan", "run_tool"]

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


def _config_listing(kind: str | None) -> str:
    """The packaged configs, the tool's own folder first: ``name  what it is`` per line."""
    from mseg_semantic.config import config_summary, packaged_configs

    shipped = packaged_configs()
    names = sorted(shipped, key=lambda n: (not (kind and n.startswith(kind + "/")), n))
    width = max(map(len, names), default=0)
    return "\n".join(f"  {n:<{width}}  {config_summary(shipped[n])}".rstrip() for n in names)


def _short_names(kind: str | None) -> str:
    from mseg_semantic.config import packaged_configs

    return ", ".join(n.split("/", 1)[1] if kind and n.startswith(kind + "/") else n
                     for n in packaged_configs() if not kind or n.startswith(kind + "/"))


def inference_plan(cfg) -> list[str]:
    """``--print-config`` of mseg-test / mseg-demo / mseg-export: the checks an inference run makes first."""
    from mseg_semantic.evaluation.run import describe_inference

    return describe_inference(cfg)


def config_tool(prog: str, description: str, example: str, overrides_help: str,
                body: Callable, argv: Sequence[str] | None = None, *, kind: str = "test",
                default_config: str | None = None, describe: Callable[[object], list[str]] | None = None) -> int:
    """``PROG [--config FILE|NAME] [key=value ...] [--print-config] [--list-configs] [--debug]``: load the config,
    then ``body(cfg)`` under the policy.

    ``--config`` takes a file or a packaged config's name (:func:`mseg_semantic.config.find_config`; ``kind`` is the
    tool's folder, ``test`` or ``train``); without it the tool reads ``default_config``, and a tool without one
    refuses, listing the packaged configs. ``--print-config`` resolves and validates the config (and whatever
    ``describe(cfg)`` checks, its lines printed as YAML comments), prints it as the run would use it and exits 0.
    """
    from mseg_semantic.config import find_config, load_config

    default_text = f"default: {default_config}" if default_config else "required"
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"packaged configs (--config NAME; --list-configs says what each is): {_short_names(kind)}")
    parser.add_argument("--config", default=default_config,
                        help=f"YAML config file or packaged config name ({default_text}), e.g. {example}")
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    parser.add_argument("--print-config", action="store_true",
                        help="resolve and validate the config, print it as YAML (with what the run would do) and exit")
    parser.add_argument("--list-configs", action="store_true", help="list the packaged configs and exit")
    add_debug_flag(parser)
    args = parser.parse_intermixed_args(argv)

    def run() -> object:
        if args.list_configs:
            print(_config_listing(kind))
            return 0
        if args.config is None:
            raise UserError(f"--config is required: a YAML file or a packaged config ({_short_names(kind)}); "
                            f"{prog} --list-configs says what each is")
        cfg = load_config(find_config(args.config, kind), args.overrides)
        if not args.print_config:
            return body(cfg)
        notes = describe(cfg) if describe is not None else []
        print(cfg.to_yaml(), end="")
        for note in notes:
            print(f"# {note}")
        return 0

    return run_tool(prog, run, args.debug)
