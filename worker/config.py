"""Configuration derived from ``settings`` (worker/settings.py), for the code that uses it.

``worker/settings.py`` reads every variable (through ``.env`` and placeholder handling);
this module answers the questions built on them (distributed or embedded? which store?
is Daytona configured?) and keeps the rules about secrets: :func:`redact_url`, and
:data:`FORBIDDEN_SANDBOX_ENV`. Nothing here prints a secret.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from worker.settings import (  # noqa: F401 - re-exported: callers know them from here
    LOG_FORMATS,
    ConfigError,
    is_placeholder,
    load_dotenv_once,
    settings,
)

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
    return settings.broker_url


def result_backend_url() -> str | None:
    return settings.result_backend or settings.broker_url


def is_distributed() -> bool:
    """Distributed when a broker is configured; embedded otherwise."""
    return broker_url() is not None


def artifacts_dir() -> str:
    return settings.artifacts_dir


def database_url(artifacts: str | os.PathLike | None = None) -> str:
    """The run store's SQLAlchemy URL: ``FORGE_DATABASE_URL`` (PostgreSQL through psycopg 3,
    for a cluster), else a SQLite file ``forge.db`` in the artifacts directory (``artifacts``
    or ``FORGE_ARTIFACTS_DIR``): zero set-up, and it travels with the run directories.
    It may hold a password: show it only through :func:`redact_url`."""
    url = settings.database_url
    if url is not None:
        return url
    path = os.path.abspath(os.path.join(os.fspath(artifacts or artifacts_dir()), "forge.db"))
    return f"sqlite:///{path}"


def store_enabled() -> bool:
    """``FORGE_STORE=off`` runs without the store (run directories only; benchmarks)."""
    return settings.store


DEFAULT_DAYTONA_API_URL = "https://app.daytona.io/api"  # the seed's and the SDK's default


def get_daytona_config() -> tuple[str | None, str]:
    """``(api_key, base_url)`` as the seed documents it: the key is None when unset, the
    URL is ``DAYTONA_API_URL`` (or the seed's ``DAYTONA_BASE_URL``), else the default."""
    return settings.daytona_api_key, (settings.daytona_api_url or settings.daytona_base_url
                                      or DEFAULT_DAYTONA_API_URL)


def is_daytona_configured() -> bool:
    return get_daytona_config()[0] is not None


def discord_webhook_url() -> str | None:
    return settings.discord_webhook_url


def project_max_bytes() -> int:
    """The size cap of a directory candidate's files (FORGE_PROJECT_MAX_MB)."""
    return settings.project_max_mb * 1_000_000


# -- season standings (worker/standings.py; reference in docs/trials.md) -------------------

def regression_window() -> int:
    """FORGE_REGRESSION_WINDOW: previous runs a regression is judged against (>= 2)."""
    return settings.regression_window


# -- the Daytona sandbox budget (worker/budget.py; reference in docs/daytona.md) -----------


def daytona_max_sandboxes() -> int:
    """Most Daytona sandboxes alive at once, across every worker and run."""
    return settings.daytona_max_sandboxes


def daytona_quota() -> tuple[int, int, int]:
    """(vCPU, memory GiB, disk GiB) the budget may use; 0: the max sandboxes' worth of
    default sandboxes (1 vCPU, 1 GiB, 3 GiB each)."""
    return settings.daytona_max_cpu, settings.daytona_max_memory, settings.daytona_max_disk


def daytona_slot_wait() -> int:
    return settings.daytona_slot_wait


def daytona_lease_ttl() -> int:
    return settings.daytona_lease_ttl


def budget_redis_url() -> str | None:
    """The Redis the sandbox budget lives in (the result backend's, else the broker's);
    None in embedded mode, where the budget is kept in the process."""
    for url in (result_backend_url(), broker_url()):
        if url and url.startswith(("redis://", "rediss://", "unix://")):
            return url
    return None


# -- observability (worker/observability/; reference in docs/observability.md) -----------


def sentry_dsn() -> str | None:
    """Sentry's DSN. Unset: the SDK is never imported and nothing is sent. A secret (its
    key authenticates the sender): never printed, not even when it is refused."""
    return settings.sentry_dsn


def log_format() -> str:
    """``text`` (Celery's plain lines, the default) or ``json`` (one JSON object per line)."""
    return settings.log_format


def metrics_port() -> int | None:
    """The worker's main process serves Prometheus metrics on it; None: no metrics."""
    return settings.metrics_port


def metrics_addr() -> str:
    """Address the metrics port binds (default every interface, as Prometheus scrapes
    containers; 127.0.0.1 keeps it to this machine)."""
    return settings.metrics_addr


def metrics_dir() -> str | None:
    """Where the pool processes keep their metric files (one worker per directory; wiped
    when the worker starts). None: a fresh temporary directory."""
    return settings.metrics_dir


def web_token() -> str | None:
    """The secret that signs a person in to ``forge web``. A secret: never logged."""
    return settings.web_token


def flower_url() -> str | None:
    """Flower's address as a browser reaches it. May carry credentials: show it only
    through :func:`redact_url`."""
    return settings.flower_url
