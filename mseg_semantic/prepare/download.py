"""Resumable HTTP downloads with SHA-256 bookkeeping, and the two login flows (Cityscapes, WildDash).

A download streams into ``<file>.part`` and resumes it with an HTTP Range request; the finished file is
renamed into place atomically. Its SHA-256 is recorded in ``<root>/.mseg_prepare/checksums.json`` on the first
download (or checked against a pinned digest) and checked again whenever the file changes on disk; a
mismatching file is moved aside to ``<file>.sha256-mismatch``. Secrets never reach a log line or an
exception: URLs are shown without their query string and every message passes through ``redact``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, OpenerDirector, Request, build_opener

from mseg_semantic.atomic import atomic_write_json
from mseg_semantic.download import USER_AGENT, DownloadError, display_url, fetch, redact, sha256_file
from mseg_semantic.prepare.credentials import Credentials, CredentialsError, Secret, load_credentials
from mseg_semantic.prepare.specs import CITYSCAPES_BASE, STATE_DIR, WILDDASH_BASE, Archive, DatasetSpec

log = logging.getLogger("mseg_semantic.prepare")

class ChecksumMismatch(DownloadError):
    pass


class ManualStepRequired(RuntimeError):
    """A file only a person can fetch; the message says exactly what to do."""


# ----------------------------------------------------------------------------------------------------------
# Checksum store
# ----------------------------------------------------------------------------------------------------------
class ChecksumStore:
    """``<root>/.mseg_prepare/checksums.json``: relative path -> {sha256, size, mtime_ns}."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / STATE_DIR / "checksums.json"
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise DownloadError(f"{self.path} is corrupt ({exc}); move it away to re-record checksums") from None

    def key(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def save(self) -> None:
        atomic_write_json(self.path, self.entries, indent=1, sort_keys=True)

    def check(self, path: Path, pinned: str | None = None, force: bool = False, progress: bool = False) -> str:
        """Record the digest of ``path`` the first time, compare it afterwards; return the digest.

        A file whose size and mtime match the record is not re-hashed unless ``force``.
        """
        key = self.key(path)
        stat = path.stat()
        entry = self.entries.get(key)
        if entry and not force and not pinned and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            return entry["sha256"]
        digest = sha256_file(path, progress=progress)
        expected = pinned or (entry or {}).get("sha256")
        if expected and digest != expected:
            aside = path.with_name(path.name + ".sha256-mismatch")
            os.replace(path, aside)
            source = "the published digest" if pinned else f"the digest recorded in {self.path}"
            raise ChecksumMismatch(
                f"{key}: SHA-256 {digest} does not match {source} ({expected}); the file was moved to {aside}. "
                f"Download it again (delete the recorded entry if the archive was legitimately replaced)."
            )
        self.entries[key] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        self.save()
        return digest


# ----------------------------------------------------------------------------------------------------------
# Login flows
# ----------------------------------------------------------------------------------------------------------
def _cookie_opener() -> OpenerDirector:
    return build_opener(HTTPCookieProcessor(CookieJar()))


def _looks_like_login_form(body: bytes) -> bool:
    text = body.decode("utf-8", "replace").lower()
    return 'type="password"' in text or "type='password'" in text or 'name="password"' in text


def cityscapes_login(creds: Credentials, base: str = CITYSCAPES_BASE, timeout: float = 60.0) -> OpenerDirector:
    """Cityscapes' login is a plain form post (username, password, submit=Login); the session cookie is kept."""
    username, password = creds.require("username", "password")
    opener = _cookie_opener()
    form = urlencode({"username": username.reveal(), "password": password.reveal(), "submit": "Login"}).encode()
    try:
        with opener.open(Request(f"{base}/login/", data=form, headers={"User-Agent": USER_AGENT}), timeout=timeout) as resp:
            body = resp.read()
    except (HTTPError, URLError, OSError) as exc:
        raise DownloadError(redact(f"cityscapes: login request to {base}/login/ failed ({exc})", username, password)) from None
    if _looks_like_login_form(body):
        raise DownloadError(f"cityscapes: login refused for the configured user (source: {creds.sources.get('username')}); "
                            f"check the username/password")
    return opener


def wilddash_login(creds: Credentials, base: str = WILDDASH_BASE, timeout: float = 60.0) -> OpenerDirector:
    """WildDash is a Django site: fetch the CSRF token from the login page, then post the form with it."""
    username, password = creds.require("username", "password")
    opener = _cookie_opener()
    login_url = f"{base}/accounts/login"
    try:
        with opener.open(Request(login_url, headers={"User-Agent": USER_AGENT}), timeout=timeout) as resp:
            page = resp.read().decode("utf-8", "replace")
        match = re.search(r"name=[\"']csrfmiddlewaretoken[\"']\s+value=[\"']([^\"']+)[\"']", page) or \
            re.search(r"value=[\"']([^\"']+)[\"']\s+name=[\"']csrfmiddlewaretoken[\"']", page)
        if not match:
            raise DownloadError(f"wilddash: no csrfmiddlewaretoken on {login_url}; the site changed, download by hand")
        token = html.unescape(match.group(1))
        form = urlencode({"username": username.reveal(), "password": password.reveal(),
                          "csrfmiddlewaretoken": token, "submit": "Login"}).encode()
        request = Request(login_url, data=form, headers={"User-Agent": USER_AGENT, "Referer": login_url})
        with opener.open(request, timeout=timeout) as resp:
            body = resp.read()
    except DownloadError:
        raise
    except (HTTPError, URLError, OSError) as exc:
        raise DownloadError(redact(f"wilddash: login at {login_url} failed ({exc})", username, password)) from None
    if _looks_like_login_form(body):
        raise DownloadError(f"wilddash: login refused for the configured user (source: {creds.sources.get('username')}); "
                            f"check the username/password")
    return opener


LOGINS = {"cityscapes": cityscapes_login, "wilddash": wilddash_login}
DEFAULT_LOGIN_BASES = {"cityscapes": CITYSCAPES_BASE, "wilddash": WILDDASH_BASE}
LOGIN_BASES = dict(DEFAULT_LOGIN_BASES)  # where the login sites are; tests point them at a local server


# ----------------------------------------------------------------------------------------------------------
# Dataset level
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DownloadResult:
    archive: str
    path: Path | None
    status: str  # "downloaded" | "present" | "skipped (optional)" | "manual"
    sha256: str | None = None


def find_present(top: Path, archive: Archive) -> Path | None:
    for name in archive.names:
        if (top / name).is_file():
            return top / name
    return None


def manual_message(spec: DatasetSpec, archive: Archive, root: Path, reason: str = "") -> str:
    target = (Path(root) / spec.top_dir / archive.filename).resolve()
    also = f" (also accepted as {', '.join(archive.aliases)})" if archive.aliases else ""
    lines = [f"{spec.key}: {archive.filename}{also} has to be fetched by hand{': ' + reason if reason else ''}.",
             f"  1. {archive.manual or 'Download it from ' + display_url(archive.url or '')}",
             f"  2. put it at {target}",
             f"  3. rerun: mseg-prepare all --datasets {spec.key} --root {Path(root).resolve()}"]
    return "\n".join(lines)


def download_dataset(spec: DatasetSpec, root: Path, *, credentials_file=None, include_optional: bool = False,
                     progress: bool = True, recheck: bool = False) -> list[DownloadResult]:
    """Fetch every archive of ``spec`` into ``<root>/<top dir>/`` that is not there yet.

    Archives already present (downloaded earlier or placed by hand) are checksum-checked instead. Raises
    ``ManualStepRequired`` (after fetching everything else) when a required archive can only be fetched by hand.
    """
    root = Path(root)
    top = root / spec.top_dir
    top.mkdir(parents=True, exist_ok=True)
    store = ChecksumStore(root)
    results: list[DownloadResult] = []
    manual: list[tuple[str, Archive]] = []
    openers: dict[str, OpenerDirector] = {}
    creds: Credentials | None = None
    for archive in spec.archives:
        present = find_present(top, archive)
        if present is not None:
            digest = store.check(present, pinned=archive.sha256, force=recheck, progress=progress)
            log.info("%s: %s present (sha256 %s...)", spec.key, present.name, digest[:12])
            results.append(DownloadResult(archive.filename, present, "present", digest))
            continue
        if archive.needed_for == "optional" and not include_optional:
            results.append(DownloadResult(archive.filename, None, "skipped (optional)"))
            continue
        url, shown, secrets = archive.url, None, ()
        if archive.personal_url:
            creds = creds or load_credentials(spec.key, credentials_file)
            link = creds.get("url")
            if not link:
                manual.append((manual_message(spec, archive, root, "no personal download link configured"), archive))
                results.append(DownloadResult(archive.filename, None, "manual"))
                continue
            base = link.reveal()
            if archive.personal_url_suffix:
                base = base.rstrip("/") + "/" + archive.personal_url_suffix
            url, shown, secrets = base, f"<personal link for {spec.key}>/{archive.filename}", (link,)
        if url is None:
            manual.append((manual_message(spec, archive, root), archive))
            results.append(DownloadResult(archive.filename, None, "manual"))
            continue
        opener = None
        if archive.login:
            creds = creds or load_credentials(spec.key, credentials_file)
            if not (creds.get("username") and creds.get("password")):
                reason = (f"no credentials configured (set MSEG_{spec.key.upper()}_USERNAME / _PASSWORD, "
                          f"or '{spec.key}: {{username, password}}' in the credentials file, to let mseg-prepare log in)")
                manual.append((manual_message(spec, archive, root, reason), archive))
                results.append(DownloadResult(archive.filename, None, "manual"))
                continue
            secrets = secrets + (creds.get("username"), creds.get("password"))
            base = LOGIN_BASES[archive.login]
            if archive.login not in openers:
                openers[archive.login] = LOGINS[archive.login](creds, base=base)
            opener = openers[archive.login]
            url = url.replace(DEFAULT_LOGIN_BASES[archive.login], base, 1)
        dest = top / archive.filename
        log.info("%s: downloading %s from %s", spec.key, archive.filename, shown or display_url(url))
        try:
            fetch(url, dest, opener=opener, progress=progress, secrets=secrets, shown_url=shown,
                  expect_binary=archive.extract)
        except DownloadError as exc:
            message = redact(str(exc), *secrets)
            if archive.manual:
                manual.append((manual_message(spec, archive, root, message), archive))
                results.append(DownloadResult(archive.filename, None, "manual"))
                continue
            raise DownloadError(message) from None
        digest = store.check(dest, pinned=archive.sha256, force=True, progress=progress)
        results.append(DownloadResult(archive.filename, dest, "downloaded", digest))
    # only archives the remap needs block the chain; the relabel step asks again for its own
    blocking = [text for text, archive in manual if archive.needed_for == "remap"]
    for text, archive in manual:
        if archive.needed_for == "relabel":
            log.warning("%s\n  (needed only by `mseg-prepare relabel %s`)", text, spec.key)
        elif archive.needed_for == "optional":
            log.info("%s", text)
    if blocking:
        raise ManualStepRequired("\n".join(blocking))
    return results


def missing_archives(spec: DatasetSpec, root: Path, needed_for: tuple[str, ...] = ("remap",)) -> list[Archive]:
    top = Path(root) / spec.top_dir
    return [a for a in spec.archives if a.needed_for in needed_for and find_present(top, a) is None]


__all__ = [
    "ChecksumMismatch", "ChecksumStore", "DownloadError", "DownloadResult", "ManualStepRequired", "CredentialsError",
    "Secret", "cityscapes_login", "display_url", "download_dataset", "fetch", "manual_message", "sha256_file",
    "wilddash_login",
]
