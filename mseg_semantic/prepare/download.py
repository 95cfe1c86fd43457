"""Fetch a dataset's archives: public links, the two login flows (Cityscapes, WildDash), personal links, and
the manual steps when only a person can fetch a file.

Transfers, content checks and the digest manifest are ``mseg_semantic.download``'s: an archive is recorded in
``<root>/.mseg_prepare/checksums.json`` only once it is a complete archive of its kind (and matches its
published digest, where one is known). Secrets never reach a log line or an exception.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit
from urllib.request import HTTPCookieProcessor, OpenerDirector, Request, build_opener

from mseg_semantic.download import (
    USER_AGENT,
    ChecksumManifest,
    DownloadError,
    InvalidContent,
    display_url,
    fetch,
    part_path,
    redact,
)
from mseg_semantic.errors import EXIT_BAD_INPUT, EXIT_CHECKS_FAILED
from mseg_semantic.prepare.credentials import Credentials, load_credentials
from mseg_semantic.prepare.specs import STATE_DIR, Archive, DatasetSpec, archives_in_use, find_present

log = logging.getLogger("mseg_semantic.prepare")

ASIDE_SUFFIXES = (".invalid", ".md5-mismatch", ".sha1-mismatch", ".sha256-mismatch")


class ManualStepRequired(RuntimeError):
    """A file only a person can fetch; the message says exactly what to do."""

    exit_code = EXIT_CHECKS_FAILED


class LoginRefused(DownloadError):
    """The site refused the configured credentials: bad input."""

    exit_code = EXIT_BAD_INPUT


def prepare_manifest(root: Path) -> ChecksumManifest:
    return ChecksumManifest(Path(root) / STATE_DIR / "checksums.json", root)


# ----------------------------------------------------------------------------------------------------------
# Login flows
# ----------------------------------------------------------------------------------------------------------
def site_of(url: str) -> str:
    """scheme://host[:port] of a URL: where its site's login page is."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _cookie_opener() -> OpenerDirector:
    return build_opener(HTTPCookieProcessor(CookieJar()))


def _looks_like_login_form(body: bytes) -> bool:
    text = body.decode("utf-8", "replace").lower()
    return 'type="password"' in text or "type='password'" in text or 'name="password"' in text


def _refused(dataset: str, creds: Credentials) -> LoginRefused:
    return LoginRefused(f"{dataset}: login refused for the configured user (source: {creds.sources.get('username')}); "
                        f"check the username/password")


def cityscapes_login(creds: Credentials, base: str, timeout: float = 60.0) -> OpenerDirector:
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
        raise _refused("cityscapes", creds)
    return opener


def wilddash_login(creds: Credentials, base: str, timeout: float = 60.0) -> OpenerDirector:
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
        raise _refused("wilddash", creds)
    return opener


LOGINS = {"cityscapes": cityscapes_login, "wilddash": wilddash_login}


# ----------------------------------------------------------------------------------------------------------
# Where an archive comes from
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """How to fetch one archive: a URL (with what to show instead of it), or why a person has to."""

    url: str | None
    shown: str | None = None
    secrets: tuple = ()
    login: str | None = None
    manual_reason: str = ""


@dataclass
class Sources:
    """Credentials and login sessions of one dataset, loaded and opened only when an archive needs them."""

    spec: DatasetSpec
    credentials_file: str | None = None
    _creds: Credentials | None = None
    _openers: dict = field(default_factory=dict)

    @property
    def creds(self) -> Credentials:
        if self._creds is None:
            self._creds = load_credentials(self.spec.key, self.credentials_file)
        return self._creds

    def source(self, archive: Archive) -> Source:
        if archive.personal_url:
            link = self.creds.get("url")
            if not link:
                return Source(None, manual_reason="no personal download link configured")
            url = link.reveal()
            if archive.personal_url_suffix:
                url = url.rstrip("/") + "/" + archive.personal_url_suffix
            return Source(url, f"<personal link for {self.spec.key}>/{archive.filename}", (link,))
        if archive.url is None:
            return Source(None)
        if archive.login:
            if not (self.creds.get("username") and self.creds.get("password")):
                key = self.spec.key
                return Source(None, manual_reason=(
                    f"no credentials configured (set MSEG_{key.upper()}_USERNAME / _PASSWORD, or '{key}: {{username, "
                    f"password}}' in the credentials file, to let mseg-prepare log in)"))
            return Source(archive.url, None, (self.creds.get("username"), self.creds.get("password")), archive.login)
        return Source(archive.url)

    def opener(self, source: Source) -> OpenerDirector | None:
        if source.login is None:
            return None
        site = site_of(source.url)
        if (source.login, site) not in self._openers:  # one login serves every archive of the site
            self._openers[(source.login, site)] = LOGINS[source.login](self.creds, base=site)
        return self._openers[(source.login, site)]

    def personal_link_file_name(self) -> str:
        """The file name at the end of the personal link (say which Mapillary package it is), or ''."""
        if not any(a.personal_url for a in self.spec.archives):
            return ""
        link = self.creds.get("url")
        return urlsplit(link.reveal()).path.rsplit("/", 1)[-1] if link else ""


# ----------------------------------------------------------------------------------------------------------
# Dataset level
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DownloadResult:
    archive: str
    path: Path | None
    status: str  # "downloaded" | "present" | "skipped (optional)" | "manual"
    sha256: str | None = None
    manual: str = ""  # the instructions, when status is "manual"


def manual_message(spec: DatasetSpec, archive: Archive, root: Path, reason: str = "") -> str:
    target = (Path(root) / spec.top_dir / archive.filename).resolve()
    also = f" (also accepted as {', '.join(archive.aliases)})" if archive.aliases else ""
    lines = [f"{spec.key}: {archive.filename}{also} has to be fetched by hand{': ' + reason if reason else ''}.",
             f"  1. {archive.manual or 'Download it from ' + display_url(archive.url or '')}",
             f"  2. put it at {target}",
             f"  3. rerun: mseg-prepare all --datasets {spec.key} --root {Path(root).resolve()}"]
    own = spec.release_of(archive.filename)
    others = [r for r in spec.releases if r is not own and own is not None]
    if others:
        lines.append("  Instead of this release (" + own.name + "), these are accepted too: "
                     + "; ".join(f"{r.name}: {', '.join(r.archives)} ({r.note})" for r in others))
    return "\n".join(lines)


def _way_out(spec: DatasetSpec) -> str:
    return (f"`mseg-prepare download {spec.key} --force` fetches it again (or asks you to); if you replaced it on "
            f"purpose, `mseg-prepare download {spec.key} --rerecord` records the file on disk.")


def _archives_wanted(spec: DatasetSpec, root: Path, sources: Sources) -> tuple[Archive, ...]:
    """The archives of the release on disk; with none on disk, the one a personal link names, if any."""
    wanted = archives_in_use(spec, root)
    top = Path(root) / spec.top_dir
    if spec.releases and not any(find_present(top, a) for a in wanted if spec.release_of(a.filename)):
        named = spec.release_of(sources.personal_link_file_name())
        if named is not None:
            wanted = tuple(a for a in spec.archives if spec.release_of(a.filename) in (None, named))
    return wanted


def _note_set_aside(top: Path, archive: Archive, remove: bool) -> None:
    for name in archive.names:
        for suffix in ASIDE_SUFFIXES:
            aside = top / (name + suffix)
            if aside.is_file():
                if remove:
                    aside.unlink()
                    log.info("removed %s (set aside earlier)", aside)
                else:
                    log.info("%s was set aside earlier and is never used; delete it when you no longer need it "
                             "(`download --force` does)", aside)


def _get_archive(spec: DatasetSpec, archive: Archive, root: Path, sources: Sources, manifest: ChecksumManifest, *,
                 include_optional: bool, progress: bool, recheck: bool, force: bool, rerecord: bool) -> DownloadResult:
    top = Path(root) / spec.top_dir
    source = sources.source(archive)
    _note_set_aside(top, archive, remove=force)
    present = find_present(top, archive)
    if present is not None and not (force and source.url):
        try:
            digest = manifest.check(present, published=archive.digest, rehash=recheck, rerecord=rerecord or force,
                                    placed_by_user=source.url is None, hint=_way_out(spec), progress=progress)
            log.info("%s: %s present (sha256 %s...)", spec.key, present.name, digest[:12])
            return DownloadResult(archive.filename, present, "present", digest)
        except InvalidContent as exc:
            if source.url is None:
                raise
            log.warning("%s; downloading it again", exc)
    if archive.needed_for == "optional" and not include_optional:
        return DownloadResult(archive.filename, None, "skipped (optional)")
    if source.url is None:
        return DownloadResult(archive.filename, None, "manual", manual=manual_message(spec, archive, root, source.manual_reason))
    dest = top / archive.filename
    if force:
        part_path(dest).unlink(missing_ok=True)
    log.info("%s: downloading %s from %s", spec.key, archive.filename, source.shown or display_url(source.url))
    try:
        fetch(source.url, dest, opener=sources.opener(source), progress=progress, secrets=source.secrets,
              shown_url=source.shown, expected_size=archive.size_bytes)
    except LoginRefused:
        raise
    except DownloadError as exc:
        message = redact(str(exc), *source.secrets)
        if archive.manual:
            return DownloadResult(archive.filename, None, "manual", manual=manual_message(spec, archive, root, message))
        raise type(exc)(message) from None
    digest = manifest.check(dest, published=archive.digest, source=source.shown or display_url(source.url),
                            rerecord=True, content_checked=True, hint=_way_out(spec), progress=progress)
    return DownloadResult(archive.filename, dest, "downloaded", digest)


def download_dataset(spec: DatasetSpec, root: Path, *, credentials_file=None, include_optional: bool = False,
                     progress: bool = True, recheck: bool = False, force: bool = False,
                     rerecord: bool = False) -> list[DownloadResult]:
    """Fetch every archive of ``spec`` into ``<root>/<top dir>/`` that is not there yet.

    Archives already present (downloaded earlier or placed by hand) are checked instead (``recheck``: hash
    them again even when unchanged). ``force``: fetch again whatever can be fetched (the present file is
    replaced once the new copy is complete), record anew what only a person can fetch. ``rerecord``: trust
    the files on disk over the digests recorded for them. Raises ``ManualStepRequired`` (after fetching
    everything else) when an archive the remap needs can only be fetched by hand.
    """
    root = Path(root)
    (root / spec.top_dir).mkdir(parents=True, exist_ok=True)
    sources = Sources(spec, credentials_file)
    manifest = prepare_manifest(root)
    results = [_get_archive(spec, archive, root, sources, manifest, include_optional=include_optional,
                            progress=progress, recheck=recheck, force=force, rerecord=rerecord)
               for archive in _archives_wanted(spec, root, sources)]
    # only archives the remap needs block the chain; the relabel step asks again for its own
    blocking = []
    for result in results:
        needed_for = spec.archive(result.archive).needed_for
        if result.status != "manual":
            continue
        if needed_for == "remap":
            blocking.append(result.manual)
        elif needed_for == "relabel":
            log.warning("%s\n  (needed only by `mseg-prepare relabel %s`)", result.manual, spec.key)
        else:
            log.info("%s", result.manual)
    if blocking:
        raise ManualStepRequired("\n".join(blocking))
    return results
