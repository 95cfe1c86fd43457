"""One run per output directory.

``<output_dir>/.mseg-train.lock`` is held with an exclusive POSIX record lock (``fcntl.lockf``) for the life of the
run. The kernel drops it when the process ends, however it ends (kill -9 included), so a lock left by a dead run
never blocks a resume. A POSIX lock belongs to the process, not to the file descriptor, so the data-loader workers
a run forks (which outlive a killed parent by a moment) never hold it; it also works on NFS. The file's content
(pid, host, start time, command) only serves the message a second run prints. On a file system without locks the
check falls back to "is that pid alive on this host".
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from mseg_semantic.atomic import process_alive
from mseg_semantic.errors import UserError

__all__ = ["LOCK_NAME", "OutputDirInUse", "OutputDirLock"]

LOCK_NAME = ".mseg-train.lock"


class OutputDirInUse(UserError):
    """Another live run holds the output directory."""


class OutputDirLock:
    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self._fd: int | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, holder: dict) -> OutputDirInUse:
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        command = f" ({holder['command']})" if holder.get("command") else ""
        return OutputDirInUse(
            f"output_dir {self.path.parent} is in use by {who}{command}; lock {self.path}. Wait for it to finish, stop it, "
            f"or give this run another output_dir"
        )

    def acquire(self) -> "OutputDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise self._refuse(self._holder()) from None
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            holder = self._holder()  # no locks on this file system: trust a live pid on this host
            if holder.get("host") == socket.gethostname() and process_alive(int(holder.get("pid", 0))) and holder.get("pid") != os.getpid():
                os.close(fd)
                raise self._refuse(holder) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (removing it would race a waiting run)
            self._fd = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
