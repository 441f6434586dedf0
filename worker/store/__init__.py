"""The run store: every run, its candidates, results and scores, in SQLite or PostgreSQL.

The run directory stays the file artifact; the store is what ``forge list``/``status``
(and the web dashboard) read, so they work on a machine that shares no disk with the
workers. Location: ``FORGE_DATABASE_URL`` (``postgresql+psycopg://...``), else the SQLite
file ``<artifacts dir>/forge.db`` (:func:`worker.config.database_url`). Schema, writes,
retries: docs/store.md.

Read API (every call returns typed, frozen records from ``worker.store.read``; a
database error raises :class:`StoreError`, whose message shows the URL redacted)::

    from worker.store import open_store
    store = open_store()                     # or open_store(url) / (artifacts_dir=...)

    store.list_runs(competition=None, status=None, page=1, per_page=50)
        -> Page[RunSummary]      # newest first; .items .total .page .pages
                                 # RunSummary.states: StateCounts(queued, waiting,
                                 # running, done, failed) of its candidates
    store.run_summary(run_id)    -> RunSummary | None
    store.get_run(run_id)        -> RunDetail | None
        # .summary, .candidates: list[CandidateEntry] in manifest order, each with
        # .info (CandidateInfo) .state .worker .started_at .finished_at
        # .result (CandidateResult | None until done) .score (Score | None until judged);
        # .notes .discord .run_dir .sandboxes_alive; .forge_result() once finished
    store.run_states(run_id)     -> list[CandidateState]   # in-flight, small: poll it
    store.candidate_history(candidate_id, competition=None, limit=100)
        -> list[HistoryEntry]    # newest first: score, rank, outcome, won
    store.competitions()         -> list[CompetitionSummary]  # runs, newest, last winner
    store.load_result(run_id)    -> ForgeResult | None      # = summary.json (+ Discord)
    store.report(run_id, "html" | "md") -> str | None       # = report.html / report.md

Times are aware UTC datetimes. Candidate states: queued, waiting (for a sandbox slot),
running, done; run statuses: queued, running, finished, failed.

Write API (the hooks, all best effort: a store failure never fails a run):
``hooks.record_published(run)`` at publish, the ``task_prerun``/``task_postrun`` signals
per candidate, ``hooks.record_finished(result)`` in the chord body (one transaction of
upserts; if it fails, an outbox entry and the run directory make the retry).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.store.api import Store, open_store
    from worker.store.db import StoreError
    from worker.store.read import (
        CandidateEntry,
        CandidateState,
        CompetitionSummary,
        HistoryEntry,
        Page,
        RunDetail,
        RunSummary,
        StateCounts,
    )

# Imported on first use (PEP 562): the worker's hooks load with Celery, and an embedded
# `forge run` must not wait for SQLAlchemy before its first candidate starts.
_EXPORTS = {"Store": "api", "open_store": "api", "StoreError": "db",
            **dict.fromkeys(["CandidateEntry", "CandidateState", "CompetitionSummary",
                             "HistoryEntry", "Page", "RunDetail", "RunSummary",
                             "StateCounts"], "read")}
__all__ = ["CandidateEntry", "CandidateState", "CompetitionSummary", "HistoryEntry", "Page",
           "RunDetail", "RunSummary", "StateCounts", "Store", "StoreError", "open_store"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"worker.store.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'worker.store' has no attribute {name!r}")
