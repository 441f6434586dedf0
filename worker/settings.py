"""Every environment variable Dream Foundry reads, in one place: ``settings``.

A value comes from the environment after ``.env`` is loaded (python-dotenv, from the
working directory; the real environment wins), and a placeholder such as ``your_key``,
``<token>`` or ``changeme`` counts as unset. Each value is read where it is used, not
once at import: a changed environment (a test, ``forge doctor``) is seen, and a bad value
is refused, naming the variable and a fix, only by what uses it. Nothing else reads
``os.environ`` for configuration. docs/configuration.md lists every variable with its
default and meaning; tests/test_settings.py keeps that table and this class in step.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from dotenv import find_dotenv, load_dotenv


class ConfigError(Exception):
    """A configuration problem, worded for the user: what is wrong and how to fix it."""


_PLACEHOLDER = re.compile(r"^(your[_-].*|<.*>|changeme|xxx+|\.\.\.)$", re.IGNORECASE)
_loaded = False


def load_dotenv_once() -> None:
    """Load ``.env`` from the working directory (never overriding the real environment)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)


def is_placeholder(value: str | None) -> bool:
    return value is None or not value.strip() or bool(_PLACEHOLDER.match(value.strip()))


def raw(name: str) -> str | None:
    """The variable's value, stripped; None when unset or a placeholder."""
    load_dotenv_once()
    value = os.environ.get(name)
    return None if is_placeholder(value) else value.strip()  # type: ignore[union-attr]


# -- how a value is read ---------------------------------------------------------------

TRUE = ("1", "true", "yes", "on")


def text(var: Setting, value: str | None, default: Any) -> Any:
    return default if value is None else value


def whole(minimum: int | None = None) -> Callable[[Setting, str | None, Any], int]:
    """A whole number (at least ``minimum``), refused clearly otherwise."""
    def read(var: Setting, value: str | None, default: Any) -> int:
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{var.name}={value!r} is not a whole number; set it to e.g. "
                              f"{default}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{var.name}={number} must be at least {minimum}; e.g. "
                              f"{var.name}={default}")
        return number
    return read


def flag(var: Setting, value: str | None, default: Any) -> bool:
    return default if value is None else value.lower() in TRUE


def switch(var: Setting, value: str | None, default: Any) -> bool:
    """On unless turned off (``off``, ``0``, ``false``, ``no``)."""
    return default if value is None else value.lower() not in ("off", "0", "false", "no")


def log_format(var: Setting, value: str | None, default: Any) -> str:
    value = (value or default).lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"{var.name}={value!r} is not a log format; use "
                          f"{' or '.join(LOG_FORMATS)}")
    return value


def tcp_port(var: Setting, value: str | None, default: Any) -> int | None:
    if value is None:
        return None
    port = whole()(var, value, 9808)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{var.name}={port} is not a TCP port; e.g. 9808")
    return port


def sentry_dsn(var: Setting, value: str | None, default: Any) -> str | None:
    """A DSN is a secret (its key authenticates the sender): never shown, not even when
    refused."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        ok = (parts.scheme in ("http", "https") and bool(parts.username)
              and bool(parts.hostname) and parts.path.rstrip("/").rsplit("/", 1)[-1].isdigit())
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{var.name} is not a Sentry DSN (https://<key>@<host>/<project>); "
                          "copy it from the Sentry project's settings, Client Keys")
    return value


LOG_FORMATS = ("text", "json")


class Setting:
    """One variable: its name, default and meaning (as docs/configuration.md shows
    them), and how its value is read. ``default`` may be a function of the settings
    (a default derived from others); ``shown`` is the default as the docs say it."""

    def __init__(self, name: str, default: Any, meaning: str,
                 read: Callable[[Setting, str | None, Any], Any] = text,
                 shown: str | None = None):
        self.name, self.default, self.meaning, self.read = name, default, meaning, read
        self.shown = shown if shown is not None else (
            "unset" if default is None else str(default).lower()
            if isinstance(default, bool) else str(default))

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        default = self.default(obj) if callable(self.default) else self.default
        return self.read(self, raw(self.name), default)


def _on_off(default: bool) -> str:
    return "on" if default else "off"


class Settings:
    """Every variable, read through ``.env`` and placeholders when its attribute is read."""

    # -- broker and result backend -----------------------------------------------------
    broker_url = Setting(
        "CELERY_BROKER_URL", None, "Redis for tasks. Unset: embedded mode (`forge run` "
        "starts an in-process worker)")
    result_backend = Setting(
        "CELERY_RESULT_BACKEND", None, "Redis for results and chord state",
        shown="the broker URL")

    # -- runs --------------------------------------------------------------------------
    artifacts_dir = Setting("FORGE_ARTIFACTS_DIR", "artifacts",
                            "Where run directories go", read=lambda v, x, d: x or d)
    max_deadline = Setting("FORGE_MAX_DEADLINE", 3600, "Longest candidate deadline "
                           "planned for, seconds (sizes the visibility timeout)", whole())
    visibility_timeout = Setting(
        "FORGE_VISIBILITY_TIMEOUT",
        lambda s: s.max_deadline + s.daytona_slot_wait + 300,
        "Seconds a task may stay unacknowledged before Redis delivers it again", whole(),
        shown="FORGE_MAX_DEADLINE + FORGE_DAYTONA_SLOT_WAIT + 300")
    restore_interval = Setting(
        "FORGE_RESTORE_INTERVAL", lambda s: max(1, min(10, s.visibility_timeout // 2)),
        "Seconds between each worker's scans for tasks past the visibility timeout",
        whole(), shown="min(10, FORGE_VISIBILITY_TIMEOUT / 2)")
    result_expires = Setting("FORGE_RESULT_EXPIRES", 7 * 24 * 3600,
                             "Seconds results, chord state, run records and project "
                             "bundles are kept", whole())
    max_attempts = Setting("FORGE_MAX_ATTEMPTS", 3, "Deliveries of one candidate task "
                           "before it is recorded as failed", whole())
    backend_retries = Setting("FORGE_BACKEND_RETRIES", 20, "Tries of a result-backend "
                              "write across a Redis restart, with backoff", whole())
    soft_shutdown_timeout = Setting("FORGE_SOFT_SHUTDOWN_TIMEOUT", 60, "Seconds a worker "
                                    "being stopped lets running candidates finish", whole())
    progress_interval_ms = Setting("FORGE_PROGRESS_INTERVAL_MS", 250, "Milliseconds "
                                   "between a running candidate's progress writes", whole())
    event_window_ms = Setting("FORGE_EVENT_WINDOW_MS", 100, "Milliseconds a worker gathers "
                              "task events (for Flower) into one message; 0: one message "
                              "per event-loop turn, as Celery does", whole(0))
    broker_grace = Setting("FORGE_BROKER_GRACE", 60, "Seconds `forge run` keeps waiting "
                           "while the broker or result backend is unreachable", whole())
    fanout_grace = Setting("FORGE_FANOUT_GRACE", 60, "Seconds a run may stay "
                           "\"publishing\" before its fan-out counts as cut short", whole())
    reap_margin = Setting("FORGE_REAP_MARGIN", 600, "Seconds past FORGE_MAX_DEADLINE "
                          "before a leftover Daytona sandbox is reaped", whole())
    regression_window = Setting("FORGE_REGRESSION_WINDOW", 8, "Previous runs a candidate's "
                                "latest score is checked against for a regression "
                                "(season standings)", whole(2))
    project_max_mb = Setting("FORGE_PROJECT_MAX_MB", 20, "Size cap of a directory "
                             "candidate's files, MB, checked when a run is planned", whole(1))

    # -- the run store -----------------------------------------------------------------
    database_url = Setting(
        "FORGE_DATABASE_URL", None, "The run store's SQLAlchemy URL (PostgreSQL for a "
        "cluster); a secret's home: shown redacted", shown="SQLite forge.db in the "
        "artifacts directory")
    store = Setting("FORGE_STORE", True, "`off`: no run store (run directories only)",
                    switch, shown="on")
    store_retry_interval = Setting("FORGE_STORE_RETRY_INTERVAL", 300, "Seconds between "
                                   "beat's retries of store writes that failed", whole())

    # -- scheduled competitions ----------------------------------------------------------
    competitions = Setting("FORGE_COMPETITIONS", None, "The competitions file",
                           shown="./forge.toml, else the repository's")
    beat_schedule = Setting("FORGE_BEAT_SCHEDULE", "celerybeat-schedule",
                            "Beat's persistent schedule state file")
    schedule_grace = Setting("FORGE_SCHEDULE_GRACE", 3600, "A scheduled slot missed by "
                             "more than this many seconds is skipped, not run late", whole())

    # -- local sandboxes -----------------------------------------------------------------
    sandbox = Setting("FORGE_SANDBOX", None, "`plain` forces the local sandbox's "
                      "fallback without bubblewrap (weaker isolation)")
    sandbox_uid = Setting("FORGE_SANDBOX_UID", None, "`keep`: a worker running as root "
                          "does not map each sandbox to a fresh host uid")
    require_isolation = Setting("FORGE_REQUIRE_ISOLATION", False, "`1`: refuse to run a "
                                "candidate without filesystem and network isolation", flag,
                                shown="off")
    no_cgroups = Setting("FORGE_NO_CGROUPS", False, "`1`: no cgroup per sandbox (memory "
                         "and process caps then rely on rlimits)", flag, shown="off")
    sandbox_dir = Setting("FORGE_SANDBOX_DIR", None, "Where sandbox directories are made",
                          shown="/dev/shm when it is a tmpfs, else TMPDIR")
    warm_sandboxes = Setting("FORGE_WARM_SANDBOXES", 1, "Bubblewrap sandboxes each "
                             "worker process keeps set up, interpreter started, for its next "
                             "candidate of the same competition (`0`: none)", whole(0))
    warm_idle = Setting("FORGE_WARM_IDLE", 10, "Seconds an unused warm sandbox is kept "
                        "before it is removed", whole(1))

    # -- Daytona -------------------------------------------------------------------------
    daytona_api_key = Setting("DAYTONA_API_KEY", None, "Daytona's API key (`forge run "
                              "--daytona`); unset: runs fall back to local sandboxes")
    daytona_api_url = Setting("DAYTONA_API_URL", None, "Daytona's API URL",
                              shown="https://app.daytona.io/api")
    daytona_base_url = Setting("DAYTONA_BASE_URL", None, "The seed's name for "
                               "DAYTONA_API_URL, still read when that is unset")
    daytona_max_sandboxes = Setting("FORGE_DAYTONA_MAX_SANDBOXES", 10, "Daytona sandboxes "
                                    "alive at once, across every worker and run", whole(1))
    daytona_max_cpu = Setting("FORGE_DAYTONA_MAX_CPU", 0, "vCPUs the sandbox budget may "
                              "use (0: one per sandbox)", whole(0))
    daytona_max_memory = Setting("FORGE_DAYTONA_MAX_MEMORY", 0, "Memory GiB the sandbox "
                                 "budget may use (0: one per sandbox)", whole(0))
    daytona_max_disk = Setting("FORGE_DAYTONA_MAX_DISK", 0, "Disk GiB the sandbox budget "
                               "may use (0: three per sandbox)", whole(0))
    daytona_slot_wait = Setting("FORGE_DAYTONA_SLOT_WAIT", 1800, "Seconds a run may wait "
                                "for sandboxes, from its first request", whole(1))
    daytona_lease_ttl = Setting("FORGE_DAYTONA_LEASE_TTL", 30, "Seconds a killed worker's "
                                "sandbox slots stay taken", whole(2))

    # -- Discord ---------------------------------------------------------------------------
    discord_webhook_url = Setting("DISCORD_WEBHOOK_URL", None, "Webhook the winner's post "
                                  "goes to; unset: nothing is posted")

    # -- observability and the dashboard ----------------------------------------------------
    sentry_dsn = Setting("SENTRY_DSN", None, "Sentry DSN: errors become events (secrets "
                         "scrubbed); unset: the SDK is not imported", sentry_dsn)
    log_format = Setting("FORGE_LOG_FORMAT", "text", "`json`: one JSON object per log line",
                         log_format)
    metrics_port = Setting("FORGE_METRICS_PORT", None, "Port each worker's main process "
                           "serves Prometheus metrics on; unset: no metrics", tcp_port)
    metrics_addr = Setting("FORGE_METRICS_ADDR", "0.0.0.0", "Address the metrics port "
                           "binds")
    metrics_dir = Setting("FORGE_METRICS_DIR", None, "Directory of the pool processes' "
                          "metric files, one per worker", shown="a temporary directory")
    trace = Setting("FORGE_TRACE", None, "Benchmarks only: a file each run phase's time "
                    "stamp is appended to (bench/embedded_startup.py)", shown="unset: no tracing")
    web_token = Setting("FORGE_WEB_TOKEN", None, "The dashboard's sign-in token (16+ "
                        "random characters); unset: actions off, loopback only")
    flower_url = Setting("FORGE_FLOWER_URL", None, "Flower's address as a browser reaches "
                         "it (task links, `forge doctor`)")

    @classmethod
    def variables(cls) -> list[Setting]:
        """Every setting, in the order above."""
        return [v for v in vars(cls).values() if isinstance(v, Setting)]

    @classmethod
    def fingerprint(cls) -> tuple[str | None, ...]:
        """Every setting's variable as the environment holds it: equal fingerprints, equal
        settings (what was made under one set of settings is reused only under the same,
        e.g. warm sandboxes). Unparsed: a warm sandbox asks twice per candidate, and
        ``raw`` for every setting cost ~0.2 ms each time, this a third of that."""
        load_dotenv_once()
        env = os.environ.copy()
        return tuple(env.get(v.name) for v in cls.variables())


settings = Settings()
