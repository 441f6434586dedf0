"""Configuration from the environment (and ``.env``), with placeholders treated as unset.

Read once per process. Secrets are only ever read here and handed to the code that
needs them; nothing in this module prints them.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

_PLACEHOLDER = re.compile(r"^(your[_-].*|<.*>|changeme|xxx+|\.\.\.)$", re.IGNORECASE)

# Never passed into a sandbox, whatever a competition's allow-list says.
FORBIDDEN_SANDBOX_ENV = frozenset(
    {
        "DAYTONA_API_KEY",
        "DAYTONA_API_URL",
        "DAYTONA_BASE_URL",
        "DISCORD_WEBHOOK_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "FLOWER_BASIC_AUTH",
        "REDIS_PASSWORD",
        "FORGE_DATABASE_URL",
        "POSTGRES_PASSWORD",
        "FORGE_WEB_TOKEN",
    }
)

_loaded = False


def load_dotenv_once() -> None:
    """Load ``.env`` from the working directory (never overriding the real environment)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    try:
        from dotenv import find_dotenv, load_dotenv
    except ImportError:  # pragma: no cover - python-dotenv is a dependency
        return
    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)


def is_placeholder(value: str | None) -> bool:
    return value is None or not value.strip() or bool(_PLACEHOLDER.match(value.strip()))


def env(name: str, default: str | None = None) -> str | None:
    """An environment value, ``default`` when unset or a placeholder like ``your_key``."""
    load_dotenv_once()
    value = os.environ.get(name)
    return default if is_placeholder(value) else value.strip()  # type: ignore[union-attr]


def env_int(name: str, default: int) -> int:
    raw = env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a whole number; set it to e.g. {default}"
        ) from None


class ConfigError(Exception):
    """A configuration problem, worded for the user: what is wrong and how to fix it."""


def redact_url(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    else:
        netloc = f":***@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def broker_url() -> str | None:
    return env("CELERY_BROKER_URL")


def result_backend_url() -> str | None:
    return env("CELERY_RESULT_BACKEND") or broker_url()


def is_distributed() -> bool:
    """Distributed when a broker is configured; embedded otherwise."""
    return broker_url() is not None


def artifacts_dir() -> str:
    return env("FORGE_ARTIFACTS_DIR", "artifacts") or "artifacts"


def database_url(artifacts: str | os.PathLike | None = None) -> str:
    """The run store's SQLAlchemy URL: ``FORGE_DATABASE_URL`` (PostgreSQL through psycopg 3,
    for a cluster), else a SQLite file ``forge.db`` in the artifacts directory (``artifacts``
    or ``FORGE_ARTIFACTS_DIR``): zero set-up, and it travels with the run directories.
    It may hold a password: show it only through :func:`redact_url`."""
    url = env("FORGE_DATABASE_URL")
    if url is not None:
        return url
    path = os.path.abspath(os.path.join(os.fspath(artifacts or artifacts_dir()), "forge.db"))
    return f"sqlite:///{path}"


def store_enabled() -> bool:
    """``FORGE_STORE=off`` runs without the store (run directories only; benchmarks)."""
    return (env("FORGE_STORE", "on") or "on").lower() not in ("off", "0", "false", "no")


DEFAULT_DAYTONA_API_URL = "https://app.daytona.io/api"  # the seed's and the SDK's default


def get_daytona_config() -> tuple[str | None, str]:
    """``(api_key, base_url)`` as the seed documents it: the key is None when unset, the
    URL is ``DAYTONA_API_URL`` (or the seed's ``DAYTONA_BASE_URL``), else the default."""
    return env("DAYTONA_API_KEY"), (env("DAYTONA_API_URL") or env("DAYTONA_BASE_URL")
                                    or DEFAULT_DAYTONA_API_URL)


def is_daytona_configured() -> bool:
    return get_daytona_config()[0] is not None


def discord_webhook_url() -> str | None:
    return env("DISCORD_WEBHOOK_URL")


def env_count(name: str, default: int, minimum: int = 0) -> int:
    """A whole number of at least ``minimum``, refused clearly otherwise."""
    value = env_int(name, default)
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}; e.g. {name}={default}")
    return value


# -- directory candidates (dispatcher/pack.py; reference in candidates/README.md) ----------

# A project's files, in MB (10^6 bytes), past which planning refuses it: each project is
# stored once per run in the result backend (Redis memory) and unpacked in every sandbox.
PROJECT_MAX_MB = 20


def project_max_bytes() -> int:
    """The size cap of a directory candidate's files (FORGE_PROJECT_MAX_MB)."""
    return env_count("FORGE_PROJECT_MAX_MB", PROJECT_MAX_MB, 1) * 1_000_000


# -- season standings (worker/standings.py; reference in docs/trials.md) -------------------

# How many of a candidate's previous runs its latest score is checked against.
REGRESSION_WINDOW = 8


def regression_window() -> int:
    """FORGE_REGRESSION_WINDOW: previous runs a regression is judged against (>= 2)."""
    return env_count("FORGE_REGRESSION_WINDOW", REGRESSION_WINDOW, minimum=2)


# -- the Daytona sandbox budget (worker/budget.py; reference in docs/daytona.md) -----------

# The first Daytona tier allows 10 vCPU and a default sandbox takes 1.
DAYTONA_MAX_SANDBOXES = 10
# Seconds a run may wait for sandboxes (slots, refusals, an image build) from its start.
DAYTONA_SLOT_WAIT = 1800
# Seconds a lease outlives its last heartbeat: how long a killed worker holds its slots.
DAYTONA_LEASE_TTL = 30


def daytona_max_sandboxes() -> int:
    """Most Daytona sandboxes alive at once, across every worker and run."""
    return env_count("FORGE_DAYTONA_MAX_SANDBOXES", DAYTONA_MAX_SANDBOXES, 1)


def daytona_quota() -> tuple[int, int, int]:
    """(vCPU, memory GiB, disk GiB) the budget may use; 0: the max sandboxes' worth of
    default sandboxes (1 vCPU, 1 GiB, 3 GiB each)."""
    return (env_count("FORGE_DAYTONA_MAX_CPU", 0), env_count("FORGE_DAYTONA_MAX_MEMORY", 0),
            env_count("FORGE_DAYTONA_MAX_DISK", 0))


def daytona_slot_wait() -> int:
    return env_count("FORGE_DAYTONA_SLOT_WAIT", DAYTONA_SLOT_WAIT, 1)


def daytona_lease_ttl() -> int:
    return env_count("FORGE_DAYTONA_LEASE_TTL", DAYTONA_LEASE_TTL, 2)


def budget_redis_url() -> str | None:
    """The Redis the sandbox budget lives in (the result backend's, else the broker's);
    None in embedded mode, where the budget is kept in the process."""
    for url in (result_backend_url(), broker_url()):
        if url and url.startswith(("redis://", "rediss://", "unix://")):
            return url
    return None


# -- observability (worker/observability/; reference in docs/observability.md) -----------

LOG_FORMATS = ("text", "json")


def sentry_dsn() -> str | None:
    """Sentry's DSN. Unset: the SDK is never imported and nothing is sent. A secret (its
    key authenticates the sender): never printed, not even when it is refused."""
    dsn = env("SENTRY_DSN")
    if dsn is None:
        return None
    try:
        parts = urlsplit(dsn)
        ok = (parts.scheme in ("http", "https") and bool(parts.username)
              and bool(parts.hostname) and parts.path.rstrip("/").rsplit("/", 1)[-1].isdigit())
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError("SENTRY_DSN is not a Sentry DSN (https://<key>@<host>/<project>); "
                          "copy it from the Sentry project's settings, Client Keys")
    return dsn


def log_format() -> str:
    """``FORGE_LOG_FORMAT``: ``text`` (Celery's plain lines, the default) or ``json`` (one
    JSON object per line, for a log pipeline)."""
    value = (env("FORGE_LOG_FORMAT", "text") or "text").lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"FORGE_LOG_FORMAT={value!r} is not a log format; use "
                          f"{' or '.join(LOG_FORMATS)}")
    return value


def metrics_port() -> int | None:
    """``FORGE_METRICS_PORT``: the worker's main process serves Prometheus metrics on it.
    Unset: no metrics (none defined, none served)."""
    if env("FORGE_METRICS_PORT") is None:
        return None
    port = env_int("FORGE_METRICS_PORT", 9808)
    if not 1 <= port <= 65535:
        raise ConfigError(f"FORGE_METRICS_PORT={port} is not a TCP port; e.g. 9808")
    return port


def metrics_addr() -> str:
    """Address the metrics port binds (default every interface, as Prometheus scrapes
    containers; 127.0.0.1 keeps it to this machine)."""
    return env("FORGE_METRICS_ADDR", "0.0.0.0") or "0.0.0.0"


def metrics_dir() -> str | None:
    """``FORGE_METRICS_DIR``: where the pool processes keep their metric files (one worker
    per directory; wiped when the worker starts). Unset: a fresh temporary directory."""
    return env("FORGE_METRICS_DIR")


def web_token() -> str | None:
    """``FORGE_WEB_TOKEN``: the secret that signs a person in to ``forge web``. Unset, the
    dashboard's actions are off and it binds only to loopback. A secret: never logged."""
    return env("FORGE_WEB_TOKEN")


def flower_url() -> str | None:
    """``FORGE_FLOWER_URL``: Flower's address as a browser reaches it (the dashboard links
    each candidate to its task there; ``forge doctor`` checks it answers). May carry
    credentials: show it only through :func:`redact_url`."""
    return env("FORGE_FLOWER_URL")
