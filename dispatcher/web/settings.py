"""What ``forge web`` runs with, checked before it binds: one typed record for the app.

The rules that keep the dashboard safe to start are here, so the CLI and the tests see
the same ones: it binds to loopback unless a token is set; a token is long enough to
resist guessing; Flower's URL is an http(s) URL (it becomes a link in every page).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from worker import config

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MIN_TOKEN_CHARS = 16
TOKEN_HINT = ("generate one with: python3 -c 'import secrets; "
              "print(secrets.token_urlsafe(32))'")


@dataclass(frozen=True)
class WebSettings:
    """The dashboard's configuration (from flags and the environment, never a request)."""

    artifacts_dir: str
    token: str | None = None  # FORGE_WEB_TOKEN; None: actions off, loopback only
    flower_url: str | None = None  # FORGE_FLOWER_URL, without a trailing slash
    competitions: str | None = None  # forge.toml (None: FORGE_COMPETITIONS, ./, the repo's)
    database_url: str | None = None  # None: config.database_url(artifacts_dir)
    # Seconds between store reads of a live run when nothing wakes the watcher sooner
    # (a broker's task events do, within milliseconds, in distributed mode).
    poll_interval: float = 0.5

    @property
    def actions_enabled(self) -> bool:
        return self.token is not None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_token(token: str | None) -> str | None:
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise config.ConfigError(
            f"FORGE_WEB_TOKEN is {len(token)} characters long; use at least "
            f"{MIN_TOKEN_CHARS} random characters ({TOKEN_HINT})")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token: anyone who reaches the port
    would read every run (and, with actions, the token is what stands in their way)."""
    if not is_loopback(host) and token is None:
        raise config.ConfigError(
            f"refusing to bind the dashboard to {host}: it would be reachable from other "
            "machines without any sign-in. Set FORGE_WEB_TOKEN (in the environment or .env; "
            f"{TOKEN_HINT}), or bind to 127.0.0.1 (the default)")


def check_flower_url(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise config.ConfigError(
            f"FORGE_FLOWER_URL={config.redact_url(url)!r} is not an http(s) URL; set it to "
            "Flower's address as a browser reaches it, e.g. http://127.0.0.1:5555")
    if parts.password is not None:
        raise config.ConfigError(
            "FORGE_FLOWER_URL holds a password; it becomes a link in every page: give "
            "the URL without credentials (Flower asks for them itself)")
    return url.rstrip("/")


def from_environment(artifacts_dir: str | None = None, *,
                     competitions: str | None = None) -> WebSettings:
    """Settings from the environment (and ``.env``); raises ConfigError with the fix."""
    if not config.store_enabled():
        raise config.ConfigError(
            "the dashboard reads the run store, and FORGE_STORE=off switches it off; unset "
            "FORGE_STORE (runs then record themselves in the store)")
    root = artifacts_dir or config.artifacts_dir()
    return WebSettings(artifacts_dir=os.path.abspath(root),
                       token=check_token(config.web_token()),
                       flower_url=check_flower_url(config.flower_url()),
                       competitions=competitions)
