"""Beat's schedule, built from forge.toml when beat starts (``celery -A worker beat``).

The app names :class:`CompetitionScheduler` as its ``beat_scheduler`` by string, so only
beat imports this module and reads forge.toml: a worker runs whatever the file holds.
A missing or invalid file stops beat before it schedules anything, with the message
that names the entry and the field.
"""

from __future__ import annotations

import sys
from datetime import timedelta

from celery.beat import PersistentScheduler
from celery.schedules import schedule as every_schedule

from dispatcher.competitions import CompetitionsError, load_competitions
from dispatcher.scheduling import TASK_NAME
from worker.app import SCHEDULE_GRACE
from worker.store.hooks import beat_entries

TASK = TASK_NAME


def entry_name(competition: str) -> str:
    return f"competition:{competition}"


def build_beat_schedule(competitions, grace: int) -> dict[str, dict]:
    """One beat entry per enabled competition; its message expires after the grace."""
    entries = {}
    for comp in competitions.values():
        if not comp.enabled:
            continue
        sched = (every_schedule(timedelta(seconds=comp.every)) if comp.every is not None
                 else comp.crontab())
        entries[entry_name(comp.name)] = {
            "task": TASK,
            "schedule": sched,
            "args": (comp.name,),
            # A firing still queued after the grace is stale: the broker drops it.
            "options": {"expires": grace},
        }
    return entries


class CompetitionScheduler(PersistentScheduler):
    """PersistentScheduler whose entries are forge.toml's competitions."""

    def __init__(self, *args, **kwargs):
        app = kwargs.get("app") or args[0]
        try:
            comps = load_competitions()
        except CompetitionsError as exc:
            sys.stderr.write(f"beat: refusing to start: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(2) from None
        # forge.toml's competitions, and the run store's retry of writes still owed.
        app.conf.beat_schedule = {**build_beat_schedule(comps, SCHEDULE_GRACE),
                                  **beat_entries()}
        super().__init__(*args, **kwargs)
