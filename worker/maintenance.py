"""Housekeeping tasks for celery beat: sweeping Daytona sandboxes nobody will delete.

A worker killed between create and delete (SIGKILL, OOM, a lost machine) leaves its
sandbox running. Every sandbox carries our labels, so a periodic sweep can find those
older than any task could still be using and delete them. Beat entry::

    app.conf.beat_schedule["reap-daytona-sandboxes"] = {
        "task": "worker.maintenance.reap_sandboxes",
        "schedule": 900.0,  # every 15 minutes
        "kwargs": {"max_age_seconds": None},  # None: FORGE_MAX_DEADLINE + margin
    }
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from worker import config
from worker.app import MAX_DEADLINE
from worker.sandbox import get_backend
from worker.settings import settings

logger = logging.getLogger("dream_foundry")

NOT_CONFIGURED = "Daytona not configured (set DAYTONA_API_KEY and DAYTONA_API_URL)"


def default_max_age() -> int:
    """Older than this, a sandbox belongs to no running task: the longest deadline plus
    a margin (``FORGE_MAX_DEADLINE`` + ``FORGE_REAP_MARGIN``, default 3600 + 600 s)."""
    return MAX_DEADLINE + settings.reap_margin


def sweep(max_age_seconds: float | None = None, dry_run: bool = False,
          owner: str | None = None) -> list[dict[str, Any]]:
    """List (``dry_run``) or delete our sandboxes older than ``max_age_seconds``.

    Raises ``ConfigError`` when Daytona is not configured; SDK errors propagate.
    """
    if not config.is_daytona_configured():
        raise config.ConfigError(NOT_CONFIGURED)
    age = default_max_age() if max_age_seconds is None else max(0.0, float(max_age_seconds))
    return get_backend("daytona").reap(age, dry_run=dry_run, owner=owner)  # type: ignore[attr-defined]


@shared_task(name="worker.maintenance.reap_sandboxes", ignore_result=False)
def reap_sandboxes(max_age_seconds: float | None = None, dry_run: bool = False,
                   owner: str | None = None) -> dict[str, Any]:
    """Beat's sweep. Never raises: a Daytona outage is reported and retried next period."""
    if not config.is_daytona_configured():
        return {"skipped": NOT_CONFIGURED, "sandboxes": []}
    try:
        found = sweep(max_age_seconds, dry_run, owner)
    except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds
        message = get_backend("daytona").scrub(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
        logger.warning("reap_sandboxes failed: %s", message)
        return {"error": message, "sandboxes": []}
    deleted = sum(1 for e in found if e["deleted"])
    failed = [e for e in found if e["error"]]
    if found:
        logger.warning("reap_sandboxes: %d orphaned sandbox(es) %s, %d failed",
                       len(found), "listed" if dry_run else f"found, {deleted} deleted",
                       len(failed))
    return {"listed": len(found), "deleted": deleted, "failed": len(failed),
            "dry_run": dry_run, "sandboxes": found}
