"""Safe, idempotent extraction of zip and tar(.gz) archives.

Every member is checked before it is written: absolute paths, ``..`` components, links whose target leaves
the destination (also by way of other links in the archive), and device/fifo entries are refused; so is an
archive that unpacks to more than :class:`ExtractionLimits` allow (a zip bomb: too many bytes in total, or
too many per byte of archive). The archive is unpacked into a temporary directory beside the destination and
moved in only when complete, so a refused, truncated or interrupted extraction leaves the destination
untouched. A marker file records a finished extraction; a second call is a no-op.
"""

from __future__ import annotations

import bz2
import collections
import gzip
import json
import logging
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from tqdm import tqdm

from mseg_semantic.atomic import atomic_write_json
from mseg_semantic.errors import UserError

log = logging.getLogger("mseg_semantic.prepare")

GIB = 1 << 30


class UnsafeArchiveError(UserError):
    pass


class ArchiveError(UserError):
    """A missing, truncated or damaged archive: the message names it and how to get a good copy."""


class ArchiveTooLarge(UnsafeArchiveError):
    pass


@dataclass(frozen=True)
class ExtractionLimits:
    """How much one archive may unpack to: ``max_bytes`` in total, and ``max_ratio`` bytes per byte of archive
    (the largest real archive, COCO's train2017.zip, unpacks to 18 GB at a ratio of about 1; text and JSON
    reach 10-20; a zip bomb thousands). Archives unpacking to at most ``floor_bytes`` skip the ratio test."""

    max_bytes: int = 200 * GIB
    max_ratio: float = 100.0
    floor_bytes: int = 64 << 20

    def allowed(self, archive_bytes: int) -> int:
        return min(self.max_bytes, max(self.floor_bytes, int(self.max_ratio * archive_bytes)))

    def check(self, archive: Path, unpacked: int) -> None:
        size = archive.stat().st_size
        if unpacked <= self.allowed(size):
            return
        if unpacked > self.max_bytes:
            limit = f"the limit of {self.max_bytes / GIB:g} GiB per archive (raise it with --max-unpacked-gb)"
        else:
            limit = (f"{self.max_ratio:g} times its own size of {size} bytes (raise the ratio with --max-ratio if "
                     f"the archive is genuine)")
        raise ArchiveTooLarge(f"{archive}: unpacks to more than {unpacked} bytes, over {limit}; a zip bomb? "
                              f"refusing to extract")


def _damaged(archive: Path, exc: BaseException) -> ArchiveError:
    return ArchiveError(f"{archive}: truncated or damaged archive ({exc or type(exc).__name__}); nothing was extracted. "
                        f"Download it again (`mseg-prepare download DATASET --force`) or replace the file")


@dataclass(frozen=True)
class MemberFilter:
    strip_prefix: str = ""
    include: tuple[str, ...] = ()
    include_suffixes: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    optional_prefixes: tuple[str, ...] = ()

    def apply(self, name: str) -> str | None:
        """The path to write for member ``name`` (already validated), or None to skip it."""
        for prefix in self.optional_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if self.strip_prefix:
            if not name.startswith(self.strip_prefix):
                return None
            name = name[len(self.strip_prefix):]
        if not name:
            return None
        if self.include and not any(name.startswith(p) for p in self.include):
            return None
        if self.include_suffixes and not name.endswith(self.include_suffixes):
            return None
        if any(fragment in name for fragment in self.exclude):
            return None
        return name


def _check_member_path(archive: Path, name: str) -> str:
    """Normalised relative path of a member; raises on absolute paths and '..'."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    return "/".join(parts)


def _check_link_target(archive: Path, member: str, target: str, hard: bool) -> str:
    """Normalised archive-relative path a link points to; raises when it leaves the destination."""
    kind = "hard link" if hard else "symlink"
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: {kind} {member!r} -> {target!r} points outside the destination; refusing to extract")
    resolved = posixpath.normpath(target if hard else posixpath.join(posixpath.dirname(member), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: {kind} {member!r} -> {target!r} points outside the destination; refusing to extract")
    return resolved


def _inside(archive: Path, root: str, path: Path, member: str) -> Path:
    """``path`` if it resolves inside ``root`` (a real path); links extracted earlier can chain out of it, e.g.
    ``a/b/l1 -> ../..`` then ``l2 -> a/b/l1/../..`` (each fine on its own) then a file ``l2/x``."""
    real = os.path.realpath(path)
    if real != root and not real.startswith(root + os.sep):
        raise UnsafeArchiveError(f"{archive}: member {member!r} resolves outside the destination through a link; "
                                 "refusing to extract")
    return path


def _check_links(archive: Path, root: str, links: list[tuple[Path, str]]) -> None:
    """Every extracted symlink, now that all members exist, still resolves inside ``root``."""
    for link, member in links:
        _inside(archive, root, link, member)


def archive_kind(path: Path) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    raise ArchiveError(f"{path}: not a zip or tar archive (a truncated download, or an HTML page?); download it again "
                       f"(`mseg-prepare download DATASET --force`) or replace the file")


@dataclass(frozen=True)
class Member:
    """One archive member, zip or tar alike."""

    name: str  # as the archive writes it
    kind: str  # dir | file | symlink | hardlink | device | other
    size: int = 0  # declared; reading the member stops there
    link: str = ""  # target of a symlink or hard link
    open: Callable[[], BinaryIO] | None = None


def _zip_members(zf: zipfile.ZipFile) -> Iterator[Member]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            yield Member(info.filename, "device")
        elif stat.S_ISLNK(mode):
            yield Member(info.filename, "symlink", link=zf.read(info).decode("utf-8", "replace"))
        elif info.is_dir():
            yield Member(info.filename, "dir")
        else:
            yield Member(info.filename, "file", info.file_size, open=lambda info=info: zf.open(info))


def _tar_members(tf: tarfile.TarFile) -> Iterator[Member]:
    for member in tf:
        if member.isdev():  # character/block device or fifo
            yield Member(member.name, "device")
        elif member.issym():
            yield Member(member.name, "symlink", link=member.linkname)
        elif member.islnk():
            yield Member(member.name, "hardlink", link=member.linkname)
        elif member.isdir():
            yield Member(member.name, "dir")
        elif member.isfile():
            yield Member(member.name, "file", member.size, open=lambda member=member: tf.extractfile(member))
        else:
            yield Member(member.name, "other")


def _place(archive: Path, tmp: Path, members: Iterable[Member], member_filter: MemberFilter,
           limits: ExtractionLimits) -> int:
    """Check each member, then write it under ``tmp``; returns how many were written."""
    count = unpacked = 0
    root, links = os.path.realpath(tmp), []
    for member in members:
        name = _check_member_path(archive, member.name)
        if member.kind == "device":
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a device/fifo/socket; refusing to extract")
        if member.kind == "symlink":
            _check_link_target(archive, name, member.link, hard=False)
        link_source = _check_link_target(archive, name, member.link, hard=True) if member.kind == "hardlink" else None
        unpacked += member.size
        limits.check(archive, unpacked)
        out_name = member_filter.apply(name) if name else None
        if out_name is None or member.kind == "other":
            continue
        dest = _inside(archive, root, tmp / out_name, member.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if member.kind == "dir":
            dest.mkdir(parents=True, exist_ok=True)
        elif member.kind == "symlink":
            _check_link_target(archive, out_name, member.link, hard=False)
            os.symlink(member.link, dest)
            links.append((dest, member.name))
        elif member.kind == "hardlink":
            source_name = member_filter.apply(link_source)
            source = _inside(archive, root, tmp / source_name, member.name) if source_name else None
            if source is None or not source.is_file():
                raise UnsafeArchiveError(f"{archive}: hard link {member.name!r} -> {member.link!r} does not point to an extracted file")
            shutil.copyfile(source, dest)
        else:
            with member.open() as source_stream, open(dest, "wb") as out:
                shutil.copyfileobj(source_stream, out, 1 << 20)
        count += 1
    _check_links(archive, root, links)
    return count


def _unpack(archive: Path, kind: str, tmp: Path, member_filter: MemberFilter, progress: bool, limits: ExtractionLimits) -> int:
    bar = tqdm(desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False)
    with bar:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                # the directory declares every size up front: a bomb is refused before anything is written
                limits.check(archive, sum(info.file_size for info in zf.infolist()))
                return _place(archive, tmp, _counted(_zip_members(zf), bar), member_filter, limits)
        # streaming mode: one pass over multi-GB .tar.gz files; members are checked one by one before writing
        with _decompressed(archive) as stream:
            tail = _TailKeeper(stream)
            with tarfile.open(fileobj=tail, mode="r|") as tf:
                count = _place(archive, tmp, _counted(_tar_members(tf), bar), member_filter, limits)
                _check_tar_end(archive, tf.offset, tail)
            return count


def _decompressed(archive: Path) -> BinaryIO:
    """The archive's tar bytes. gzip, bz2 and xz readers check the stream to its end: a cut file raises EOFError,
    damaged data a CRC error (tarfile's own stream reader checks neither)."""
    with open(archive, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(archive, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(archive, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(archive, "rb")
    return open(archive, "rb")


class _TailKeeper:
    """A read-only stream that counts the bytes read and keeps the latest ones, for :func:`_check_tar_end`."""

    KEEP = 1 << 16  # more than tarfile reads ahead (one 10 KiB record)

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.total = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.kept = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.stream.read(size)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:  # what the decompressors say about a bad stream
            raise tarfile.ReadError(f"{type(exc).__name__}: {exc}") from None
        self.total += len(data)
        self.chunks.append(data)
        self.kept += len(data)
        while self.kept - len(self.chunks[0]) >= self.KEEP:
            self.kept -= len(self.chunks.popleft())
        return data

    def window(self, start: int, length: int) -> bytes:
        """Bytes ``start .. start + length`` of the stream, reading on as far as needed (short at its end)."""
        while self.total < start + length and self.read(length):
            pass
        first = self.total - self.kept
        if start < first:
            raise RuntimeError(f"tar end check: byte {start} is no longer kept")  # a bug, not bad input
        return b"".join(self.chunks)[start - first:start - first + length]

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _check_tar_end(archive: Path, end: int, tail: _TailKeeper) -> None:
    """The members stopped at byte ``end``: a complete archive has its two zero blocks there. tarfile also stops,
    silently, at a header cut short or damaged; reading the rest checks the compressed stream to its end."""
    marker = tail.window(end, 2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        what = "cut short" if len(marker) < 2 * tarfile.BLOCKSIZE else "not the end-of-archive blocks"
        raise tarfile.ReadError(f"the member header at byte {end} is {what}")
    tail.drain()


def _counted(members: Iterator[Member], bar) -> Iterator[Member]:
    for member in members:
        bar.update(1)
        yield member


def _merge_into(src: Path, dest: Path) -> None:
    """Move the tree ``src`` into ``dest``; existing directories are merged, existing files replaced."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge_into(entry, target)
            entry.rmdir()
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)


def read_marker(marker: Path) -> dict | None:
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def extract_archive(archive: Path, dest: Path, marker: Path, member_filter: MemberFilter = MemberFilter(),
                    progress: bool = True, force: bool = False, limits: ExtractionLimits = ExtractionLimits()) -> bool:
    """Unpack ``archive`` into ``dest`` safely; returns False when the marker says it is already done."""
    archive, dest, marker = Path(archive), Path(dest), Path(marker)
    done = read_marker(marker)
    if done and not force:
        if not archive.exists() or (done.get("size") == archive.stat().st_size and done.get("mtime_ns") == archive.stat().st_mtime_ns):
            return False
    if not archive.is_file():
        raise ArchiveError(f"{archive} does not exist; run `mseg-prepare download` first")
    kind = archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".mseg_extract_tmp.{archive.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        try:
            count = _unpack(archive, kind, tmp, member_filter, progress, limits)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise _damaged(archive, exc) from None
        _merge_into(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    st = archive.stat()
    payload = {"archive": str(archive), "dest": str(dest), "members": count, "size": st.st_size,
               "mtime_ns": st.st_mtime_ns, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(marker, payload, indent=1)
    log.info("extracted %s (%d entries) into %s", archive.name, count, dest)
    return True


def extract_dataset(spec, root: Path, progress: bool = True, force: bool = False, delete_archives: bool = False,
                    only_needed_for: tuple[str, ...] | None = None,
                    limits: ExtractionLimits = ExtractionLimits()) -> list[str]:
    """Run the extraction steps of a dataset spec; returns the archives extracted this time.

    A required archive that is missing is an error; an archive needed only for relabeling (ADE20K's full
    release) or an optional one is skipped with a note, and so are the archives of releases not in use.
    ``only_needed_for``: only the archives needed for those steps, and only those present (the relabel step
    unpacks an instance archive placed late).
    """
    from mseg_semantic.prepare.specs import archives_in_use, extraction_marker, find_present

    root = Path(root)
    top = root / spec.top_dir
    in_use = {a.filename for a in archives_in_use(spec, root)}
    done: list[str] = []
    for step in spec.extract:
        archive_spec = spec.archive(step.archive)
        marker = extraction_marker(root, spec.key, step.archive)
        if archive_spec is not None:
            if archive_spec.filename not in in_use:
                continue  # another release of the dataset is the one on disk
            path = find_present(top, archive_spec)
            needed_for = archive_spec.needed_for
        else:  # an archive inside an archive (COCO's panoptic PNG zips)
            path = top / step.archive
            needed_for = "remap"
        if only_needed_for is not None and needed_for not in only_needed_for:
            continue
        if path is None or not path.is_file():
            if only_needed_for is not None:
                continue
            if read_marker(marker) and not force:
                continue  # extracted earlier, archive deleted since
            if needed_for == "remap":
                raise ArchiveError(f"{spec.key}: {top / step.archive} is missing; run `mseg-prepare download {spec.key}` "
                                   f"(or place the file there by hand)")
            log.info("%s: %s not present, skipped (%s)", spec.key, step.archive,
                     "needed only for relabel" if needed_for == "relabel" else "optional")
            continue
        member_filter = MemberFilter(step.strip_prefix, step.include, step.include_suffixes, step.exclude,
                                     step.optional_prefixes)
        if extract_archive(path, top / step.dest, marker, member_filter, progress=progress, force=force, limits=limits):
            done.append(step.archive)
        if delete_archives and path.exists():
            path.unlink()
    return done
