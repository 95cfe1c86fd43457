"""Progress of mseg-test and mseg-demo: a bar on a terminal, plain lines anywhere else.

A bar redraws one line, which a log file or a pipe never shows until the end (or shows as a mess of carriage
returns); there a line ``DESC: 30/101 images (30%), 2.31 img/s, ETA 31 s`` goes out every ``every_images`` images or
``every_seconds`` seconds, whichever comes first, and a closing line gives the total time.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tqdm import tqdm

__all__ = ["Progress"]

EVERY_SECONDS = 30.0
LINES_PER_RUN = 10  # without a time trigger: about this many lines over a run of known length


def _duration(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """``update(n)`` after every ``n`` items, ``close()`` at the end. ``enabled=False``: silent (validation during
    training). ``stream`` defaults to stderr; a bar only when it is a terminal."""

    def __init__(self, total: int | None, desc: str, unit: str = "images", enabled: bool = True, stream: TextIO | None = None,
                 every_images: int | None = None, every_seconds: float = EVERY_SECONDS, postfix: bool = False):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.bar = None
        self.done = 0
        self.started = time.perf_counter()
        self.last_line = self.started
        self.last_count = 0
        self.every_images = every_images or (max(1, math.ceil(total / LINES_PER_RUN)) if total else 0)
        self.every_seconds = every_seconds
        if enabled and _is_terminal(self.stream):
            self.bar = tqdm(total=total, desc=desc, unit=unit[:3], file=self.stream, dynamic_ncols=True)

    def update(self, count: int, **postfix: str) -> None:
        self.done += count
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(count)
            if postfix:
                self.bar.set_postfix(**postfix)
            return
        now = time.perf_counter()
        by_count = self.every_images and self.done - self.last_count >= self.every_images
        by_time = now - self.last_line >= self.every_seconds
        if (by_count or by_time) and (self.total is None or self.done < self.total):
            self._line(now, postfix)

    def _line(self, now: float, postfix: dict) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            where = f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%), {rate:.2f} {self.unit}/s, " \
                    f"ETA {_duration(eta) if math.isfinite(eta) else '?'}"
        else:
            where = f"{self.done} {self.unit}, {rate:.2f} {self.unit}/s"
        extra = "".join(f", {k} {v}" for k, v in postfix.items())
        print(f"{self.desc}: {where}{extra}", file=self.stream, flush=True)
        self.last_line, self.last_count = now, self.done

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            return
        elapsed = time.perf_counter() - self.started
        rate = self.done / elapsed if elapsed > 0 else float("nan")
        print(f"{self.desc}: {self.done}{'/' + str(self.total) if self.total else ''} {self.unit} in {_duration(elapsed)} "
              f"({rate:.2f} {self.unit}/s)", file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
