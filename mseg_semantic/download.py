"""Resumable HTTP downloads, content checks and the SHA-256 manifest: what the weights cache and dataset
preparation share.

A download streams into ``<file>.part`` and resumes it with an HTTP Range request; the finished file is
checked (archive or checkpoint magic bytes, a complete zip directory / gzip stream / tar end) and only then
renamed into place, so a file at the target path is always complete and of the kind its name says. Secrets
never reach a log line or an exception: URLs are shown without their query string or credentials.

:class:`ChecksumManifest` is the one record of digests, with one mismatch policy:

- a file that is not what its name says (an HTML page, a truncated archive) is never recorded: it is moved
  aside to ``<file>.invalid``;
- a file that differs from a *published* digest is wrong for certain: it is moved aside to
  ``<file>.<algorithm>-mismatch``, so that the next download fetches it again;
- a file that differs from the digest *recorded* earlier stays where it is (it may have been replaced on
  purpose) and is refused until the user chooses: fetch it again (``--force``) or trust the file on disk
  (``--rerecord``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Iterable
from urllib.error import HTTPError, URLError
from urllib.parse import quote, quote_plus, urlsplit
from urllib.request import OpenerDirector, Request, build_opener

from tqdm import tqdm

from mseg_semantic.atomic import atomic_write_json
from mseg_semantic.errors import EXIT_BAD_INPUT, EXIT_CHECKS_FAILED

log = logging.getLogger("mseg_semantic.download")

USER_AGENT = "mseg_semantic/0.1 (+https://github.com/mseg-dataset)"
CHUNK = 1 << 20
DIGEST_ALGORITHMS = ("md5", "sha1", "sha256")


class DownloadError(RuntimeError):
    """A download failed (network, server answer, wrong digest): the command's input was fine, try again."""

    exit_code = EXIT_CHECKS_FAILED


class InvalidContent(DownloadError):
    """A file is not what its name says. Exit 2 when the user placed it, 1 when a server sent it."""

    def __init__(self, message: str, placed_by_user: bool = False):
        super().__init__(message)
        self.exit_code = EXIT_BAD_INPUT if placed_by_user else EXIT_CHECKS_FAILED


class DigestMismatch(DownloadError):
    pass


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = str(value)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "***"

    __repr__ = __str__

    def __bool__(self) -> bool:
        return bool(self._value)


def redact(text: str, *secrets: Secret | str | None) -> str:
    """``text`` with every secret value (and its URL-encoded forms) replaced by ``***``."""
    for secret in secrets:
        if secret is None:
            continue
        value = secret.reveal() if isinstance(secret, Secret) else str(secret)
        if len(value) < 1:
            continue
        for form in {value, quote(value, safe=""), quote_plus(value)}:
            text = text.replace(form, "***")
    return text


def display_url(url: str) -> str:
    """scheme://host[:port]/path without query or credentials: safe to print for any URL."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # drop user:password@
    return f"{parts.scheme}://{host}{parts.path}"


# ----------------------------------------------------------------------------------------------------------
# Digests
# ----------------------------------------------------------------------------------------------------------
def parse_digest(published: str) -> tuple[str, str]:
    """``"md5:6cd6..."`` -> ("md5", "6cd6..."); a bare 64-digit hex value is a SHA-256."""
    algorithm, _, value = published.partition(":")
    if not value and re.fullmatch(r"[0-9a-fA-F]{64}", algorithm):
        algorithm, value = "sha256", algorithm
    if algorithm not in DIGEST_ALGORITHMS or not re.fullmatch(r"[0-9a-fA-F]+", value):
        raise ValueError(f"published digest {published!r} is not ALGORITHM:HEX with ALGORITHM one of {', '.join(DIGEST_ALGORITHMS)}")
    return algorithm, value.lower()


def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",), progress: bool = False) -> dict[str, str]:
    """Several digests of one file in one read."""
    hashers = {name: hashlib.new(name) for name in dict.fromkeys(algorithms)}
    size = Path(path).stat().st_size
    with open(path, "rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}",
                                          disable=not progress, leave=False) as bar:
        for block in iter(lambda: handle.read(CHUNK), b""):
            for hasher in hashers.values():
                hasher.update(block)
            bar.update(len(block))
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def sha256_file(path: Path, progress: bool = False) -> str:
    return file_digests(path, ("sha256",), progress)["sha256"]


# ----------------------------------------------------------------------------------------------------------
# Content checks: is the file what its name says?
# ----------------------------------------------------------------------------------------------------------
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")


def content_kind(name: str) -> str | None:
    """zip | gzip | tar | checkpoint | text, from a file name; None for names we have no check for."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith((".tar.gz", ".tgz")):
        return "gzip"
    if lower.endswith(".tar"):
        return "tar"
    if lower.endswith(CHECKPOINT_SUFFIXES):
        return "checkpoint"
    if lower.endswith(".txt"):
        return "text"
    return None


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text[:512]


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            # the directory at the end, and each member's local header where the directory says it is: a
            # download resumed onto the wrong bytes keeps a sound directory but not the headers
            for info in archive.infolist():
                with archive.open(info):
                    pass
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, or a compression method Python lacks
        return f"a zip archive Python cannot read ({exc})"
    except (zipfile.BadZipFile, EOFError) as exc:
        with open(path, "rb") as handle:
            starts_like_zip = handle.read(4) == b"PK\x03\x04"
        if starts_like_zip:
            return f"a truncated or damaged zip archive ({exc})"
        return "not a zip archive"
    return None


def _gzip_problem(path: Path) -> str | None:
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            return "not a gzip-compressed archive"
        handle.seek(0)
        # the whole stream: a truncated .tar.gz is only visible at its end
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        read = 0
        try:
            for block in iter(lambda: handle.read(CHUNK), b""):
                read += len(block)
                data = block
                while data:
                    decompressor.decompress(data, 1 << 16)
                    data = decompressor.unconsumed_tail
                    if decompressor.eof:  # a second gzip member may follow
                        data = decompressor.unused_data + data
                        if data:
                            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as exc:
            return f"a damaged gzip stream ({exc}, after {read} bytes)"
        if not decompressor.eof:
            return f"a truncated gzip stream (it ends after {read} bytes, before its end marker)"
    return None


def _tar_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(tarfile.BLOCKSIZE)
        try:
            tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:
            return "not a tar archive"
        if size % tarfile.BLOCKSIZE or size < 3 * tarfile.BLOCKSIZE:
            return f"a truncated tar archive ({size} bytes is not a whole number of 512-byte blocks)"
        handle.seek(size - 2 * tarfile.BLOCKSIZE)
        if handle.read().strip(b"\0"):
            return "a truncated tar archive (no end-of-archive blocks at its end)"
    return None


def _checkpoint_problem(path: Path) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04"):
        problem = _zip_problem(path)
        if problem:
            return problem.replace("zip archive", "PyTorch checkpoint (zip format)")
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return "a zip archive without data.pkl, not a PyTorch checkpoint"
        return None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # torch's legacy format: a pickle stream
        return None
    return f"not a PyTorch checkpoint (it starts with {head[:8]!r})"


def _text_problem(path: Path) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the block
            return "not a text file"
    return None


_CHECKS = {"zip": _zip_problem, "gzip": _gzip_problem, "tar": _tar_problem, "checkpoint": _checkpoint_problem,
           "text": _text_problem}
_KIND_WORDS = {"zip": "a zip archive", "gzip": "a .tar.gz archive", "tar": "a tar archive",
               "checkpoint": "a PyTorch checkpoint", "text": "a text file"}


def content_problem(path: str | os.PathLike, name: str | None = None, expected_size: int | None = None) -> str | None:
    """What is wrong with ``path`` given the kind its ``name`` (default: its own) promises; None when fine."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty"
    if expected_size is not None and size != expected_size:
        return f"{size} bytes where {expected_size} are expected"
    with open(path, "rb") as handle:
        head = handle.read(1024)
    kind = content_kind(name or path.name)
    if _looks_like_html(head):
        what = _KIND_WORDS.get(kind or "", "the file")
        return f"an HTML page, not {what} (a login, terms or error page?)"
    return _CHECKS[kind](path) if kind else None


def move_aside(path: Path, suffix: str) -> Path:
    """Rename ``path`` to ``path + suffix`` (replacing an older one): kept for inspection, never read again."""
    aside = path.with_name(path.name + suffix)
    os.replace(path, aside)
    return aside


# ----------------------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------------------
class ChecksumManifest:
    """``checksums.json``: path relative to ``base`` -> {sha256, size, mtime_ns, source, recorded, checked}.

    ``checked`` is the published digest a file was compared with ("" when none), and says its content was
    checked; entries written by older versions lack it and are checked again.
    """

    def __init__(self, path: str | os.PathLike, base: str | os.PathLike | None = None):
        self.path = Path(path)
        self.base = Path(base) if base is not None else self.path.parent
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise InvalidContent(f"{self.path}: not valid JSON ({exc}); move it away to record the digests again",
                                     placed_by_user=True) from None
            if not isinstance(data, dict):
                raise InvalidContent(f"{self.path}: expected a JSON object of path -> record", placed_by_user=True)
            self.entries = data

    def key(self, file: Path) -> str:
        file, base = Path(file).resolve(), self.base.resolve()
        try:
            return file.relative_to(base).as_posix()
        except ValueError:
            return file.as_posix()

    def get(self, file: Path) -> dict | None:
        return self.entries.get(self.key(file))

    def forget(self, file: Path) -> None:
        if self.entries.pop(self.key(file), None) is not None:
            self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.entries, indent=1, sort_keys=True)

    def check(self, file: Path, *, published: str | None = None, source: str = "", rehash: bool = False,
              rerecord: bool = False, content_checked: bool = False, placed_by_user: bool = False,
              hint: str = "", progress: bool = False) -> str:
        """Record ``file``'s SHA-256 the first time, compare it afterwards (the policy above); returns it.

        A file whose size and mtime match a checked record is not read again unless ``rehash``.
        ``rerecord``: forget the recorded digest and record the file on disk (a published one still applies).
        ``hint``: the way out, appended to a mismatch message.
        """
        file = Path(file)
        key = self.key(file)
        stat = file.stat()
        entry = None if rerecord else self.entries.get(key)
        expected = parse_digest(published) if published else None
        published_text = f"{expected[0]}:{expected[1]}" if expected else ""
        if (entry and not rehash and entry.get("checked") == published_text and entry.get("size") == stat.st_size
                and entry.get("mtime_ns") == stat.st_mtime_ns):
            return entry["sha256"]
        if not content_checked:
            problem = content_problem(file)
            if problem:
                aside = move_aside(file, ".invalid")
                self._drop(key)
                raise InvalidContent(f"{file} is {problem}; it was moved to {aside} and nothing was recorded", placed_by_user)
        algorithms = ("sha256", expected[0]) if expected else ("sha256",)
        digests = file_digests(file, algorithms, progress)
        if expected and digests[expected[0]] != expected[1]:
            aside = move_aside(file, f".{expected[0]}-mismatch")
            self._drop(key)
            raise DigestMismatch(f"{file}: {expected[0]} {digests[expected[0]]} differs from the published {expected[1]}; "
                                 f"the file was moved to {aside} and is never used again: download it again")
        if entry and entry.get("sha256") != digests["sha256"]:
            if not expected:
                raise DigestMismatch(
                    f"{file}: SHA-256 {digests['sha256']} differs from the {entry['sha256']} recorded in {self.path} "
                    f"on {entry.get('recorded', '?')} (the file is kept: it may be damaged, or replaced on purpose). {hint}".rstrip())
            log.info("%s matches its published digest; the different SHA-256 recorded earlier is replaced", file)
        self.entries[key] = {"sha256": digests["sha256"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                             "source": source or (entry or {}).get("source", ""), "checked": published_text,
                             "recorded": (entry or {}).get("recorded") or time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.save()
        return digests["sha256"]

    def _drop(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self.save()


# ----------------------------------------------------------------------------------------------------------
# Fetch
# ----------------------------------------------------------------------------------------------------------
def _content_range_total(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(match.group(1)) if match else None


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch(url: str, dest: Path, *, opener: OpenerDirector | None = None, progress: bool = True,
          secrets: tuple = (), check_content: bool = True, expected_size: int | None = None, retries: int = 3,
          timeout: float = 60.0, shown_url: str | None = None, retry_wait: float = 2.0) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with a Range request; atomic rename at the end.

    ``check_content``: an HTML answer is refused before the transfer, and the finished file must be of the
    kind its name says (:func:`content_problem`) before it is renamed into place; otherwise it is moved to
    ``dest.invalid`` and :class:`InvalidContent` says so (the next call starts from scratch).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    opener = opener or build_opener()
    shown = shown_url or display_url(url)
    binary = check_content and content_kind(dest.name) not in (None, "text")
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, dest, part, opener, progress, binary, timeout, shown)
            break
        except (URLError, OSError, http.client.HTTPException) as exc:  # dropped connection, timeout, short read
            last_error = exc
            if attempt < retries:
                reason = redact(str(getattr(exc, "reason", exc)), url, *secrets)
                log.warning("%s: attempt %d/%d failed (%s); resuming", shown, attempt, retries, reason)
                time.sleep(min(retry_wait * attempt, 30.0))
    else:
        reason = redact(str(getattr(last_error, "reason", last_error)), url, *secrets)
        attempts = f"{retries} attempts" if retries > 1 else "1 attempt"
        kept = part.is_file() and part.stat().st_size > 0
        how = f"rerun to resume from {part} ({part.stat().st_size} bytes kept)" if kept else "rerun to try again"
        raise DownloadError(f"{shown}: download failed after {attempts} ({reason}); {how}")
    if check_content:
        problem = content_problem(part, dest.name, expected_size)
        if problem:
            aside = dest.with_name(dest.name + ".invalid")
            os.replace(part, aside)
            raise InvalidContent(f"{shown}: the server sent {problem} instead of {dest.name}; kept as {aside} for "
                                 f"inspection, nothing recorded (the next download starts from scratch)")
    os.replace(part, dest)
    return dest


def _fetch_once(url, dest, part, opener, progress, binary, timeout, shown) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = opener.open(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        if exc.code == 416 and offset:
            total = _content_range_total(exc.headers.get("Content-Range"))
            if total == offset:  # the .part file already holds everything
                return
            part.unlink()
            raise DownloadError(f"{shown}: server refused to resume (HTTP 416); the partial file was removed, rerun to start over") from None
        raise DownloadError(f"{shown}: HTTP {exc.code} {exc.reason}") from None
    with response:
        status = getattr(response, "status", 200)
        content_type = (response.headers.get("Content-Type") or "").lower()
        if binary and "text/html" in content_type:
            raise DownloadError(
                f"{shown}: the server answered with an HTML page instead of {dest.name} "
                f"(the link moved, or a login/terms page is in the way)"
            )
        length = response.headers.get("Content-Length")
        if status == 206:
            start = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range") or "")
            if not start or int(start.group(1)) != offset:
                raise DownloadError(f"{shown}: server resumed at the wrong offset; delete {part} and rerun")
            total = _content_range_total(response.headers.get("Content-Range"))
            mode = "ab"
        else:
            offset = 0  # the server ignored the Range header: start over
            total = int(length) if length is not None else None
            mode = "wb"
        with open(part, mode) as handle, tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                                               desc=dest.name, disable=not progress) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                handle.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size != total:
        raise ConnectionError(f"connection closed at {size} of {total} bytes")
