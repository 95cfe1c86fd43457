"""Resumable HTTP downloads and SHA-256 digests: what the weights cache and dataset preparation share.

A download streams into ``<file>.part`` and resumes it with an HTTP Range request; the finished file is
renamed into place atomically, so a file at the target path is always complete. Secrets never reach a log
line or an exception: URLs are shown without their query string or credentials.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable
from urllib.error import HTTPError, URLError
from urllib.parse import quote, quote_plus, urlsplit
from urllib.request import OpenerDirector, Request, build_opener

from tqdm import tqdm

log = logging.getLogger("mseg_semantic.download")

USER_AGENT = "mseg_semantic/0.1 (+https://github.com/mseg-dataset)"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
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


def sha256_file(path: Path, progress: bool = False) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as handle, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}",
                                          disable=not progress, leave=False) as bar:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _content_range_total(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(match.group(1)) if match else None


def fetch(url: str, dest: Path, *, opener: OpenerDirector | None = None, progress: bool = True,
          secrets: tuple = (), expect_binary: bool = True, retries: int = 3, timeout: float = 60.0,
          shown_url: str | None = None, retry_wait: float = 2.0) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with a Range request; atomic rename at the end.

    ``expect_binary``: an HTML answer (a login page, a moved link) is an error, not a download.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener = opener or build_opener()
    shown = shown_url or display_url(url)
    last_error: Exception | None = None
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, dest, part, opener, progress, expect_binary, timeout, shown)
            return dest
        except (URLError, OSError, http.client.HTTPException) as exc:  # dropped connection, timeout, short read
            last_error = exc
            if attempt < retries:
                reason = redact(str(getattr(exc, "reason", exc)), url, *secrets)
                log.warning("%s: attempt %d/%d failed (%s); resuming", shown, attempt, retries, reason)
                time.sleep(min(retry_wait * attempt, 30.0))
    reason = redact(str(getattr(last_error, "reason", last_error)), url, *secrets)
    attempts = f"{retries} attempts" if retries > 1 else "1 attempt"
    raise DownloadError(f"{shown}: download failed after {attempts} ({reason}); rerun to resume from {part.name}")


def _fetch_once(url, dest, part, opener, progress, expect_binary, timeout, shown) -> None:
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
                os.replace(part, dest)
                return
            part.unlink()
            raise DownloadError(f"{shown}: server refused to resume (HTTP 416); the partial file was removed, rerun to start over") from None
        raise DownloadError(f"{shown}: HTTP {exc.code} {exc.reason}") from None
    with response:
        status = getattr(response, "status", 200)
        content_type = (response.headers.get("Content-Type") or "").lower()
        if expect_binary and "text/html" in content_type:
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
    os.replace(part, dest)
