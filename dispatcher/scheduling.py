"""``start_competition``: beat's firing, dispatched from inside the cluster.

Each firing belongs to a *slot* (the scheduled time it fires for). A slot is claimed
once, with ``SET NX`` in Redis keyed by competition and slot, so two beats started by
mistake, or a restarted beat replaying a missed slot, never start the same run twice;
the run id is derived from the slot as well. A slot older than ``FORGE_SCHEDULE_GRACE``
seconds is skipped rather than fired late. The task publishes the chord with the same
code as ``forge run`` and returns at once: waiting for a chord inside a task would
hold a worker slot and can deadlock a small cluster.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from celery.signals import worker_ready

from dispatcher import dispatch
from dispatcher.competitions import CompetitionsError, get_competition, load_competitions
from dispatcher.runner import plan_request
from worker import celery_compat, config
from worker.app import SCHEDULE_GRACE

logger = logging.getLogger("dream_foundry")

PUBLISHED = "published"
# The Celery app includes this module by name (worker/app.py); beat's entries and the
# web app's "start now" publish this task by name.
TASK_NAME = "dispatcher.scheduling.start_competition"


def _lock_client(task):
    client = celery_compat.redis_client(task.backend)
    if client is None:
        raise config.ConfigError(
            "start_competition needs the Redis result backend (set CELERY_BROKER_URL / "
            "CELERY_RESULT_BACKEND to redis://...) to claim schedule slots")
    return client


def _parse_slot(comp, slot: str | None, now: datetime) -> datetime | None:
    if slot is None:
        return comp.slot_for(now)
    if slot == "now":  # an on-demand run: its own slot, at this second
        return now.replace(microsecond=0)
    parsed = datetime.fromisoformat(slot)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@shared_task(bind=True, name=TASK_NAME)
def start_competition(self, name: str, slot: str | None = None) -> dict[str, Any]:
    """Claim the competition's slot and publish its run; skip a claimed or stale slot.

    ``slot``: None for the scheduled slot now belongs to (what beat sends), ``"now"`` for
    an on-demand run, or an ISO time to (re)claim a given slot.
    """
    comp = get_competition(name)
    now = datetime.now(UTC)
    at = _parse_slot(comp, slot, now)
    if at is None:
        return {"competition": name, "status": "skipped", "reason": "no scheduled time yet"}
    run_id = comp.run_id(at)
    outcome = {"competition": name, "slot": at.isoformat(), "run_id": run_id}
    late = (now - at).total_seconds()
    if late > SCHEDULE_GRACE:
        logger.warning("competition %s: slot %s is %.0fs overdue (grace %ss); skipped",
                       name, at.isoformat(), late, SCHEDULE_GRACE)
        return {**outcome, "status": "skipped", "reason": f"overdue by {late:.0f}s"}

    client = _lock_client(self)
    key = comp.lock_key(at)
    me = self.request.id or run_id
    # The lock outlives the grace: after it, the slot is refused as overdue anyway.
    ttl = SCHEDULE_GRACE + 3600
    if not client.set(key, me, nx=True, ex=ttl):
        holder = (client.get(key) or b"").decode()
        # Only our own message, delivered again after a worker died before it published,
        # goes on; any other holder (another beat, a replay, or us done) means skip.
        if holder != me:
            logger.info("competition %s: slot %s already claimed; skipped", name, at.isoformat())
            return {**outcome, "status": "skipped", "reason": "slot already claimed"}
    try:
        plan = plan_request(comp.request(run_id))
        dispatch.publish(plan)
    except Exception:
        client.delete(key)  # not started: a redelivery or a later firing may try again
        raise
    client.set(key, f"{me}:{PUBLISHED}", ex=ttl)
    logger.info("competition %s: slot %s dispatched as run %s (%d candidates)",
                name, at.isoformat(), run_id, len(plan.tasks))
    return {**outcome, "status": "dispatched", "candidates": len(plan.tasks)}


@worker_ready.connect
def _check_competitions(sender=None, **_kwargs) -> None:
    """A worker says early when forge.toml is missing or broken (it still starts)."""
    if not config.is_distributed():
        return
    try:
        comps = load_competitions()
    except CompetitionsError as exc:
        logger.warning("scheduled competitions unavailable: %s", exc)
        return
    logger.info("scheduled competitions: %s", ", ".join(comps) or "none")
