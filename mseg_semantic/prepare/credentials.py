"""Credentials for the datasets behind a login, read from the environment or a YAML file, never logged.

Environment variables win over the file. For dataset ``cityscapes`` the variables are
``MSEG_CITYSCAPES_USERNAME`` / ``MSEG_CITYSCAPES_PASSWORD``; datasets whose owners e-mail a personal
download link take it as ``MSEG_<DATASET>_URL`` (e.g. ``MSEG_IDD_URL``). The file
(``~/.config/mseg_semantic/credentials.yaml`` or ``--credentials PATH``) holds the same values::

    cityscapes: {username: me@example.org, password: "..."}
    wilddash:   {username: me@example.org, password: "..."}
    idd:        {url: "https://...signed link from the e-mail..."}

Every value is wrapped in :class:`Secret`, whose ``str``/``repr`` is ``***``, and :func:`redact` scrubs
secret values out of any text that is about to be printed or raised.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mseg_semantic.download import Secret, redact
from mseg_semantic.errors import UserError

DEFAULT_CREDENTIALS_FILE = Path("~/.config/mseg_semantic/credentials.yaml")
FIELDS = ("username", "password", "url")


class CredentialsError(UserError):
    pass


@dataclass
class Credentials:
    dataset: str
    values: dict[str, Secret] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # field -> where it came from (no value)

    def get(self, name: str) -> Secret | None:
        return self.values.get(name)

    def require(self, *names: str) -> list[Secret]:
        missing = [n for n in names if not self.values.get(n)]
        if missing:
            env = ", ".join(env_var(self.dataset, n) for n in missing)
            raise CredentialsError(
                f"{self.dataset}: missing credential(s) {', '.join(missing)}; set {env} or add them under "
                f"'{self.dataset}:' in {DEFAULT_CREDENTIALS_FILE} (or pass --credentials FILE)"
            )
        return [self.values[n] for n in names]


def env_var(dataset: str, name: str) -> str:
    return "MSEG_" + re.sub(r"[^A-Z0-9]", "_", dataset.upper()) + "_" + name.upper()


def load_credentials(dataset: str, credentials_file: str | os.PathLike | None = None,
                     environ: dict | None = None) -> Credentials:
    """Credentials of one dataset: environment first, then the YAML file (explicit path or the default one)."""
    environ = os.environ if environ is None else environ
    creds = Credentials(dataset)
    path = Path(credentials_file).expanduser() if credentials_file else DEFAULT_CREDENTIALS_FILE.expanduser()
    if credentials_file and not path.is_file():
        raise CredentialsError(f"credentials file {path} does not exist")
    if path.is_file():
        if path.stat().st_mode & 0o077:
            logging.getLogger("mseg_semantic.prepare").warning(
                "credentials file %s is readable by other users; chmod 600 %s", path, path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            # the parser's message may quote a line of the file, i.e. a password: say only where
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise CredentialsError(f"credentials file {path} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise CredentialsError(f"credentials file {path}: expected a mapping of dataset -> {{username, password, url}}")
        entry = data.get(dataset) or {}
        if not isinstance(entry, dict):
            raise CredentialsError(f"credentials file {path}: '{dataset}' must be a mapping with keys {', '.join(FIELDS)}")
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown:
            raise CredentialsError(f"credentials file {path}: '{dataset}' has unknown key(s) {unknown}; valid: {', '.join(FIELDS)}")
        for name, value in entry.items():
            if value not in (None, ""):
                creds.values[name] = Secret(value)
                creds.sources[name] = str(path)
    for name in FIELDS:
        var = env_var(dataset, name)
        if environ.get(var):
            creds.values[name] = Secret(environ[var])
            creds.sources[name] = f"${var}"
    return creds
