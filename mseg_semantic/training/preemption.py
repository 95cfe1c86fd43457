"""Stopping a run cleanly: on SIGTERM (a scheduler's preemption notice) or Ctrl-C the loop finishes its step,
writes a checkpoint on which every rank agrees, logs it and exits with :data:`~mseg_semantic.errors.EXIT_PREEMPTED`
(75); running the same command again resumes, bit-exactly on CPU. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from mseg_semantic.errors import EXIT_PREEMPTED

__all__ = ["Preempted", "PreemptionSignal"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint; the message says where it resumes."""

    exit_code = EXIT_PREEMPTED


class PreemptionSignal:
    """While active, SIGTERM and SIGINT only set :attr:`received`; the loop decides when to stop."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionSignal":
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
