"""What the tools promise when something goes wrong: exit codes, one clear line, the nearest valid name.

Every error a user can fix (a config key, a value, a file, a dataset name) is a :class:`UserError`: the message
names the file, key or value and what would be valid, and the tools exit with :data:`EXIT_BAD_INPUT` printing
that one line (a traceback only with ``--debug`` or ``MSEG_DEBUG=1``). Any other exception is a bug and keeps
its traceback. An exception class may carry its own ``exit_code`` (a non-finite loss, a preempted run).
"""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CHECKS_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NON_FINITE",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "UnknownNameError",
    "UserError",
    "did_you_mean",
    "not_utf8_error",
]

EXIT_OK = 0
EXIT_CHECKS_FAILED = 1  # a check ran and found problems (mseg-data verify, mseg-prepare), or a download failed
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3  # mseg-train: the loss became nan/inf; the newest checkpoint is the last good state
EXIT_PREEMPTED = 75  # mseg-train stopped on SIGTERM/SIGINT after writing a checkpoint (EX_TEMPFAIL: run it again)
EXIT_INTERRUPTED = 130  # Ctrl-C outside training


class UserError(ValueError):
    """Bad input the user can fix; the message names the file, key or value and what would be valid."""

    exit_code = EXIT_BAD_INPUT


class UnknownNameError(UserError, KeyError):
    """A dataset, taxonomy, model or weights name that does not exist (also a KeyError, for lookups)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def did_you_mean(word: str, candidates: Iterable[str], n: int = 1) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidates, or ``""``: the one suggestion helper of the project.

    A close spelling first; failing that, a candidate that contains the word (``tiny`` -> ``hrnet_tiny``).
    """
    candidates = [str(c) for c in candidates]
    word = str(word)
    close = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
    if not close and len(word) >= 3:
        close = [c for c in candidates if word.lower() in c.lower()][:n]
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def not_utf8_error(path: object, error: UnicodeDecodeError, what: str) -> UserError:
    """The one-line error for a text file that is not UTF-8 (a binary file, or another encoding), naming the line."""
    data = error.object if isinstance(error.object, (bytes, bytearray)) else b""
    line = data[: error.start].count(b"\n") + 1
    byte = f"byte 0x{data[error.start]:02x}" if error.start < len(data) else "a byte"
    return UserError(f"{path}:{line}: not UTF-8 text ({byte} at offset {error.start}); {what} must be a UTF-8 text file")
