"""Secrets out of whatever leaves the process: Sentry events and breadcrumbs, and
``forge doctor``'s lines.

Two nets, because either alone misses something:

* **Known values**, read from the environment when the process starts: the Daytona key,
  the Discord webhook URL (with ``?wait=true``, and its id and token on their own), the
  password of every URL in the environment (broker, result backend, store, Flower),
  ``REDIS_PASSWORD``, ``POSTGRES_PASSWORD``, ``FLOWER_BASIC_AUTH`` (and its base64 form,
  as an ``Authorization`` header carries it), the Sentry DSN and its key, the dashboard's
  ``FORGE_WEB_TOKEN``, and any
  variable whose name says it holds a secret (``*_KEY``, ``*_TOKEN``, ``*_SECRET``,
  ``*_PASSWORD``...). Values passed into sandboxes are added as tasks name them (their
  allow-list), and from the competitions file at start. Each is replaced wherever it
  appears, whole.
* **Shapes**, whatever the value: a password in any URL (``scheme://user:pw@``), any
  Discord webhook URL, ``Basic``/``Bearer`` credentials.

Very short values are not scrubbed by value (``MIN_KNOWN`` characters for the named
secrets, ``MIN_GUESSED`` for guessed ones): replacing "abc" everywhere would garble
every message while protecting nothing that deserves the name.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.config import is_placeholder
from worker.settings import settings

FILTERED = "[Filtered]"  # Sentry's own substitute, so events read the same everywhere
MIN_KNOWN = 4
MIN_GUESSED = 6

# Variables that are secrets by name (their whole value).
SECRET_VARIABLES = ("DAYTONA_API_KEY", "DISCORD_WEBHOOK_URL", "REDIS_PASSWORD",
                    "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "SENTRY_DSN", "FORGE_WEB_TOKEN")
# A name with one of these parts holds a secret (API_KEY, GITHUB_TOKEN, DB_PASSWORD...).
SECRET_NAME_PARTS = frozenset({"KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD",
                               "PASS", "AUTH", "CREDENTIAL", "CREDENTIALS", "DSN", "WEBHOOK",
                               "PRIVATE"})

_URL_PASSWORD = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<pw>[^\s@/]+)@")
_WEBHOOK = re.compile(r"https?://(?:[\w-]+\.)?discord(?:app)?\.com/api/(?:v\d+/)?webhooks/"
                      r"[^\s\"'<>]+", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"\b(Basic|Bearer|Token)\s+[A-Za-z0-9+/=._~-]{8,}", re.IGNORECASE)


def _hide_password(m: re.Match[str]) -> str:
    if m.group("pw") in ("***", FILTERED):  # already redacted (config.redact_url)
        return m.group(0)
    return f"{m.group('pre')}{FILTERED}@"


def secret_by_name(name: str) -> bool:
    return any(part in SECRET_NAME_PARTS for part in name.upper().split("_"))


_is_placeholder = is_placeholder


class Scrubber:
    """A set of secret values plus the shapes above; thread-safe, grows as it learns."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    # -- learning -------------------------------------------------------------------

    def add(self, value: str | None, minimum: int = MIN_KNOWN) -> None:
        if not value or _is_placeholder(value):
            return
        value = value.strip()
        if len(value) < minimum:
            return
        with self._lock:
            if value not in self._values:
                self._values.add(value)
                self._pattern = None

    def add_url(self, url: str) -> None:
        """The password of a URL, as written and decoded."""
        try:
            password = urlsplit(url).password
        except ValueError:
            return
        if password:
            self.add(password)
            self.add(unquote(password))

    def add_webhook(self, url: str) -> None:
        self.add(url)
        try:
            parts = urlsplit(url)
        except ValueError:
            return
        sep = "&" if parts.query else "?"
        self.add(f"{url}{sep}wait=true")
        pieces = [p for p in parts.path.split("/") if p]
        if "webhooks" in pieces:  # /api/webhooks/<id>/<token>: the id and the token
            pieces = pieces[pieces.index("webhooks") + 1:]
        for piece in pieces:
            if len(piece) >= 8 and not piece.isalpha():  # not a word like "webhooks"
                self.add(piece)

    def add_basic_auth(self, pairs: str) -> None:
        """``user:password[,user2:password2]`` (Flower's form): each pair, each password,
        and each pair in base64 (an Authorization header)."""
        self.add(pairs)
        for pair in pairs.split(","):
            user, sep, password = pair.strip().partition(":")
            if sep:
                self.add(pair.strip())
                self.add(password)
                self.add(base64.b64encode(pair.strip().encode()).decode())

    def add_dsn(self, dsn: str) -> None:
        self.add(dsn)
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return
        self.add(parts.username)
        self.add(parts.password)

    def add_environment(self, environ: Mapping[str, str],
                        sandbox_names: Iterable[str] = ()) -> None:
        """Every secret of ``environ`` (see the module docstring)."""
        for name in SECRET_VARIABLES:
            value = environ.get(name)
            if not value:
                continue
            if name == "DISCORD_WEBHOOK_URL":
                self.add_webhook(value.strip())
            elif name == "FLOWER_BASIC_AUTH":
                self.add_basic_auth(value.strip())
            elif name == "SENTRY_DSN":
                self.add_dsn(value.strip())
            else:
                self.add(value)
        for name, value in environ.items():
            if "://" in value:
                self.add_url(value.strip())
            if secret_by_name(name):
                self.add(value, MIN_GUESSED)
        self.add_sandbox_values(sandbox_names, environ)

    def add_sandbox_values(self, names: Iterable[str], environ: Mapping[str, str]) -> None:
        """The values of the variables a competition passes into its sandboxes."""
        for name in names:
            value = environ.get(name)
            if value:
                self.add(value, MIN_GUESSED)

    # -- scrubbing ------------------------------------------------------------------

    def _compiled(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                ordered = sorted(self._values, key=len, reverse=True)  # longest first
                self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
            return self._pattern

    def scrub(self, text: str) -> str:
        pattern = self._compiled()
        if pattern is not None:
            text = pattern.sub(FILTERED, text)
        text = _WEBHOOK.sub(FILTERED, text)
        text = _URL_PASSWORD.sub(_hide_password, text)
        return _AUTH_HEADER.sub(lambda m: f"{m.group(1)} {FILTERED}", text)

    def scrub_data(self, data: Any, depth: int = 0) -> Any:
        """``data`` (an event: dicts, lists, strings) with every string scrubbed."""
        if isinstance(data, str):
            return self.scrub(data)
        if depth > 40:  # deeper than any event: leave nothing unscrubbed behind
            return FILTERED
        if isinstance(data, dict):
            return {self.scrub(k) if isinstance(k, str) else k: self.scrub_data(v, depth + 1)
                    for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.scrub_data(v, depth + 1) for v in data]
        if isinstance(data, bytes):
            return self.scrub(data.decode("utf-8", "replace"))
        return data


def competition_sandbox_names(path: str | None = None) -> list[str]:
    """The variable names forge.toml's competitions pass into sandboxes (best effort:
    a missing or broken file gives none; beat and ``forge doctor`` report it)."""
    source = path or settings.competitions
    if not source:  # as the dispatcher finds it: ./forge.toml, else the repository's
        here = os.path.join(os.getcwd(), "forge.toml")
        source = here if os.path.isfile(here) else os.path.join(
            os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
            "forge.toml")
    try:
        with open(source, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, ValueError):
        return []
    names: list[str] = []
    for entry in data.get("competition", []) if isinstance(data, dict) else []:
        env = entry.get("env") if isinstance(entry, dict) else None
        if isinstance(env, list):
            names += [n for n in env if isinstance(n, str)]
    return names


_process: Scrubber | None = None
_process_lock = threading.Lock()


def process_scrubber() -> Scrubber:
    """This process's scrubber, made from its environment on first use."""
    global _process
    with _process_lock:
        if _process is None:
            scrubber = Scrubber()
            scrubber.add_environment(os.environ, competition_sandbox_names())
            _process = scrubber
        return _process
