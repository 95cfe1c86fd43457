"""Atomic file writes: every output, report, list, marker and checkpoint of the project goes through here.

A file is written under a temporary name in its own directory (same file system, so the rename is atomic)
and renamed into place, so a reader, or a run killed mid-write, never sees a half-written file. ``durable=True``
adds an fsync of the file and of its directory (checkpoints: the rename survives a power loss too).

Temporary names are ``.<name>.<pid>-<random>.tmp<suffix>``: :func:`remove_stale_temporaries` deletes the ones a
killed process left behind and never those of a process that is still running.

A full file system (``ENOSPC``) or a spent quota (``EDQUOT``) while writing is bad input the user can fix, not a
bug: it becomes :class:`DiskFullError` (exit 2) naming the file, also when a writer such as ``torch.save`` wraps
the ``OSError`` in its own exception. The temporary is removed and the previous file, if any, is unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from mseg_semantic.errors import UserError

__all__ = [
    "DISK_FULL_ERRNOS",
    "DiskFullError",
    "raise_if_disk_full",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "link_or_copy_atomic",
    "process_alive",
    "remove_stale_temporaries",
    "renamed_into_place",
    "temporary_sibling",
]

_TEMPORARY = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]+\.tmp(\.[^.]*)?$")
DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on device"}  # errno -> how the one-line error says it
if hasattr(errno, "EDQUOT"):
    DISK_FULL_ERRNOS[errno.EDQUOT] = "disk quota exceeded"


class DiskFullError(UserError):
    """A file could not be written because its file system is full or the user's quota is spent."""


def _full_errno(exc: BaseException) -> int | None:
    """ENOSPC / EDQUOT when ``exc`` or an exception it was raised from (``__cause__`` / ``__context__``) is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def raise_if_disk_full(exc: BaseException, path: str | os.PathLike) -> None:
    """:class:`DiskFullError` naming ``path`` when ``exc`` comes from a full disk or quota; else nothing."""
    code = _full_errno(exc)
    if code is not None:
        raise DiskFullError(f"{path}: cannot be written: {DISK_FULL_ERRNOS[code]} (the previous file, if any, is unchanged; "
                            f"free some space and run the command again)") from exc


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_sibling(path: str | os.PathLike) -> Path:
    """An empty, uniquely named file beside ``path`` with the mode a plain ``open`` would give (mkstemp
    makes 0600, which would leave shared data directories unreadable to others). The caller renames it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp" + path.suffix)
    except OSError as exc:
        raise_if_disk_full(exc, path)
        raise
    os.close(fd)
    os.chmod(tmp, _default_mode())
    return Path(tmp)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], durable: bool = False) -> Path:
    """``write(handle)`` into a temporary sibling, then rename it over ``path``; nothing is left on failure."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, path)
        raise
    if durable:
        _fsync_directory(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), durable)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2, sort_keys: bool = False) -> Path:
    """JSON with a final newline; nan/inf are refused rather than written as invalid JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


@contextlib.contextmanager
def renamed_into_place(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside ``path`` (same suffix) for writers that want a file name (ONNX, TorchScript,
    video, PIL); renamed to ``path`` when the block completes, removed when it raises."""
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        raise_if_disk_full(exc, path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def link_or_copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``dst`` becomes the same file as ``src`` (a hard link, else a durable copy), atomically."""
    src, dst = Path(src), Path(dst)
    tmp = temporary_sibling(dst)
    tmp.unlink()
    try:
        try:
            os.link(src, tmp)
        except OSError:  # file systems without hard links
            with open(src, "rb") as source:
                atomic_write(tmp, lambda handle: _copy(source, handle), durable=True)
        os.replace(tmp, dst)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, dst)
        raise
    _fsync_directory(dst.parent)
    return dst


def _copy(source: BinaryIO, target: BinaryIO) -> None:
    for block in iter(lambda: source.read(1 << 20), b""):
        target.write(block)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of :func:`temporary_sibling` in ``directory`` whose writing process is gone."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
