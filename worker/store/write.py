"""The store's writes: every one an upsert or a guarded update, so replaying one is harmless.

* :func:`record_queued` (dispatcher, at publish): the run and each candidate as queued;
  a run already known (a resume, a re-publish) is left as it is.
* :func:`mark_state` / :func:`mark_done` (worker, per candidate): one-row updates of
  rows the publish created, run by ``worker.store.marks``; ``done`` never goes back.
* :func:`record_finished` (chord body, ``forge import``): the whole finished run in
  one transaction, every row an ``INSERT ... ON CONFLICT DO UPDATE``: a redelivered
  callback, or two at once, leaves exactly the rows one would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, update

from worker.records import CandidateResult, ForgeResult, RunSpec, Score
from worker.store.models import Candidate, Result, Run

RUNS, CANDIDATES, RESULTS = Run.__table__, Candidate.__table__, Result.__table__
RUN_KEY, CANDIDATE_KEY, RESULT_KEY = ["run_id"], ["run_id", "candidate_id"], \
    ["run_id", "candidate_id", "trial"]


def now() -> datetime:
    return datetime.now(UTC)


def parse_time(text: str | None) -> datetime | None:
    """An ISO-8601 time of a record (naive ones are UTC); None when absent or unreadable."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _insert(conn: Connection, table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _upsert(conn: Connection, table, key: list[str], rows: list[dict[str, Any]],
            keep: Callable[[Any], dict[str, Any]] | None = None) -> None:
    """INSERT the rows; on a key conflict set every other column to the new value, or to
    ``keep(stmt)[column]``: an expression over the existing row and ``stmt.excluded``."""
    if not rows:
        return
    stmt = _insert(conn, table)
    sets = {c: stmt.excluded[c] for c in rows[0] if c not in key}
    sets.update(keep(stmt) if keep else {})
    conn.execute(stmt.on_conflict_do_update(index_elements=key, set_=sets), rows)


def _insert_new(conn: Connection, table, key: list[str], rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(_insert(conn, table).on_conflict_do_nothing(index_elements=key), rows)


# ------------------------------------------------------------------------ publish


def record_queued(conn: Connection, run: RunSpec, at: datetime | None = None,
                  trials: int | None = None) -> None:
    """The run and every candidate as queued. Rows that exist are left alone: a resumed
    run keeps its progress, a finished one stays finished."""
    import os

    at = at or now()
    trials = trials or run.trials
    _insert_new(conn, RUNS, RUN_KEY, [{
        "run_id": run.run_id, "competition": run.competition, "objective": run.objective,
        "execution_mode": run.execution_mode, "judge": run.judge,
        "timestamp": parse_time(run.timestamp) or at, "status": "queued",
        "candidates_total": len(run.candidates), "definition_sha256": run.definition_sha256,
        "run_dir": os.path.join(run.artifacts_dir, run.run_id), "notes": list(run.notes),
        "published_at": at,
    }])
    _insert_new(conn, CANDIDATES, CANDIDATE_KEY, [
        {"run_id": run.run_id, "candidate_id": c.id, "position": i, "name": c.name,
         "description": c.description, "script": c.script,
         "content_sha256": c.content_sha256, "artifact": None}
        for i, c in enumerate(run.candidates)])
    _insert_new(conn, RESULTS, RESULT_KEY, [
        {"run_id": run.run_id, "candidate_id": c.id, "trial": k, "state": "queued"}
        for c in run.candidates for k in range(trials)])


# ------------------------------------------------------------------------ per candidate


def extra(record: Any, mapped: frozenset[str]) -> dict[str, Any] | None:
    """A record's fields that have no column (``mapped``), as plain JSON values, for the
    table's ``extra`` column: a field added to a record round-trips without a migration."""
    from worker.records import _plain

    out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
           if f.name not in mapped}
    return {k: _plain(v) for k, v in out.items()} or None


def _result_row(result: CandidateResult) -> dict[str, Any]:
    return {
        "worker": result.worker, "attempt": result.attempt, "sandbox_id": result.sandbox_id,
        "execution_mode": result.execution_mode, "isolation": result.isolation,
        "success": bool(result.success), "exit_code": result.exit_code,
        "timed_out": bool(result.timed_out), "error_message": result.error_message,
        "runtime_seconds": result.runtime_seconds,
        "started_at": parse_time(result.started_at),
        "finished_at": parse_time(result.finished_at),
        "output": result.output, "output_dropped_bytes": result.output_dropped_bytes,
        "artifact_content": result.artifact_content,
        "artifact_truncated": bool(result.artifact_truncated),
        "warnings": list(result.warnings), "log": list(result.log),
        "timings": dict(result.timings),
        "extra": extra(result, RESULT_FIELDS),
    }


# CandidateResult, Score and ForgeResult fields stored in columns of their own (the rest
# go to the row's ``extra``).
RESULT_FIELDS = frozenset({
    "candidate_id", "worker", "attempt", "sandbox_id", "execution_mode", "isolation",
    "success", "exit_code", "timed_out", "error_message", "runtime_seconds", "started_at",
    "finished_at", "output", "output_dropped_bytes", "artifact_content",
    "artifact_truncated", "warnings", "log", "timings", "trial"})
SCORE_FIELDS = frozenset({
    "candidate_id", "success", "quality_score", "speed_score", "total_score", "qualified",
    "gates", "disqualified_reason", "quality_details", "rank", "trial"})
RUN_FIELDS = frozenset({
    "run_id", "objective", "timestamp", "execution_mode", "candidates", "scores",
    "winner_id", "winner_score", "winner_artifact", "artifacts_dir", "results", "judge",
    "competition", "definition_sha256", "notes", "discord", "sandboxes_alive",
    "trial_results"})  # every trial's result is a ``results`` row of its own


# Prebuilt statements: a worker writes two per candidate, and building and cache-keying a
# fresh UPDATE of 20 columns cost more than executing it. Executed with parameters.
def _p(name: str, column):
    return bindparam(name, type_=column.type)


_R = RESULTS.c
_KEY = and_(_R.run_id == bindparam("k_run"), _R.candidate_id == bindparam("k_cand"),
            _R.trial == bindparam("k_trial"))
_UNDONE = and_(_KEY, _R.state != "done")
_MARK = {
    "running": update(RESULTS).where(_UNDONE).values(
        state="running", worker=func.coalesce(_p("v_worker", _R.worker), _R.worker),
        started_at=_p("v_at", _R.started_at)),
    "waiting": update(RESULTS).where(_UNDONE).values(
        state="waiting", worker=func.coalesce(_p("v_worker", _R.worker), _R.worker)),
}
_RUN_RUNNING = update(RUNS).where(RUNS.c.run_id == bindparam("k_run"),
                                  RUNS.c.status == "queued").values(
    status="running", started_at=_p("v_at", RUNS.c.started_at))
_DONE_COLUMNS = tuple(_result_row(CandidateResult(candidate_id="")))
_DONE = update(RESULTS).where(_KEY).values(
    state="done", **{c: _p(f"v_{c}", _R[c]) for c in _DONE_COLUMNS})


_STARTED: set[tuple] = set()  # (store, run) this process has seen marked running
Execute = Callable[[Any, dict[str, Any]], int]  # (statement, parameters) -> rows changed


def mark_state(execute: Execute, store: str, run_id: str, candidate_id: str, state: str, *,
               worker: str | None = None, trial: int = 0, at: datetime | None = None) -> int:
    """A candidate waiting (for a sandbox slot) or running; the run running from its first
    running candidate. A done candidate stays done. Returns the rows changed (0: the run
    is not in this store)."""
    at = at or now()
    key = {"k_run": run_id, "k_cand": candidate_id, "k_trial": trial}
    changed = execute(_MARK[state], {**key, "v_worker": worker, "v_at": at})
    if changed and state == "running" and (store, run_id) not in _STARTED:
        execute(_RUN_RUNNING, {"k_run": run_id, "v_at": at})
        if len(_STARTED) > 10_000:
            _STARTED.clear()
        _STARTED.add((store, run_id))  # past "queued" for good: no need to look again
    return changed


def mark_done(execute: Execute, run_id: str, result: CandidateResult, trial: int = 0) -> int:
    """A candidate's result, as it finished (before the run is judged)."""
    params = {f"v_{k}": v for k, v in _result_row(result).items()}
    return execute(_DONE, {"k_run": run_id, "k_cand": result.candidate_id, "k_trial": trial,
                           **params})


# ------------------------------------------------------------------------ finished run


def _score_row(score: Score | None) -> dict[str, Any]:
    if score is None:
        return dict.fromkeys(("score_success", "quality_score", "speed_score", "total_score",
                              "qualified", "gates", "disqualified_reason",
                              "quality_details", "rank", "extra"))
    return {"score_success": score.success, "quality_score": score.quality_score,
            "speed_score": score.speed_score, "total_score": score.total_score,
            "qualified": bool(score.qualified), "gates": dict(score.gates),
            "disqualified_reason": score.disqualified_reason,
            "quality_details": dict(score.quality_details), "rank": score.rank,
            "extra": extra(score, SCORE_FIELDS)}


def record_finished(conn: Connection, result: ForgeResult, at: datetime | None = None,
                    trial: int = 0) -> None:
    """The whole finished run (the caller's one transaction): the run, each candidate
    with its score, each result. ``finished_at`` keeps the first write's time, so a
    second write of the same result changes nothing at all."""
    at = at or now()
    r = RUNS.c
    _upsert(conn, RUNS, RUN_KEY, [{
        "run_id": result.run_id, "competition": result.competition,
        "objective": result.objective, "execution_mode": result.execution_mode,
        "judge": result.judge, "timestamp": parse_time(result.timestamp) or at,
        "status": "finished", "candidates_total": len(result.candidates),
        "definition_sha256": result.definition_sha256, "run_dir": result.artifacts_dir,
        "notes": list(result.notes), "winner_id": result.winner_id,
        "winner_score": result.winner_score, "sandboxes_alive": result.sandboxes_alive,
        "discord": result.discord, "error": None, "published_at": None, "started_at": None,
        "finished_at": at, "extra": extra(result, RUN_FIELDS),
    }], keep=lambda stmt: {"published_at": r.published_at, "started_at": r.started_at,
                           "finished_at": func.coalesce(r.finished_at,
                                                        stmt.excluded.finished_at)})
    scores = {s.candidate_id: s for s in result.scores}
    ranked = _ranks(result.scores)
    rows = []
    for i, c in enumerate(result.candidates):
        row = {"run_id": result.run_id, "candidate_id": c.id, "position": i,
               "name": c.name, "description": c.description, "script": c.script,
               "content_sha256": c.content_sha256, "artifact": c.artifact,
               **_score_row(scores.get(c.id))}
        if c.id in ranked:
            row["rank"] = ranked[c.id]
        rows.append(row)
    _upsert(conn, CANDIDATES, CANDIDATE_KEY, rows)
    # Repeated trials: a row per trial (``results`` holds representatives, one of them).
    kept = result.trial_results if result.trials > 1 else result.results
    _upsert(conn, RESULTS, RESULT_KEY, [
        {"run_id": result.run_id, "candidate_id": res.candidate_id,
         "trial": res.trial if result.trials > 1 else trial,
         "state": "done", **_result_row(res)} for res in kept])


def _ranks(scores: list[Score]) -> dict[str, int]:
    """Ranks as stored: the scores' own when they are 1..N, else their list order (a
    summary from before ranks existed lists them best first)."""
    if sorted(s.rank for s in scores) == list(range(1, len(scores) + 1)):
        return {s.candidate_id: s.rank for s in scores}
    return {s.candidate_id: i for i, s in enumerate(scores, start=1)}


def mark_failed(conn: Connection, run_id: str, error: str) -> int:
    """A run whose chord body failed: it will not finish by itself."""
    return conn.execute(update(RUNS).where(RUNS.c.run_id == run_id,
                                           RUNS.c.status != "finished")
                        .values(status="failed", error=error[:2000])).rowcount
