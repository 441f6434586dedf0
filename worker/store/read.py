"""The store's reads, each returning typed, immutable records (never ORM objects).

The records are plain frozen dataclasses built inside the query's own connection, so
a caller (the CLI, the web app) can keep and render them after the connection is back
in the pool. Reads never lock a writer out: SQLite in WAL mode and PostgreSQL's MVCC.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, and_, case, desc, func, select

from worker.judge.season import Placing, SeasonRun
from worker.records import CandidateInfo, CandidateResult, ForgeResult, Score
from worker.store.models import Candidate, Result, Run

T = TypeVar("T")


@dataclass(frozen=True)
class StateCounts:
    """How many of a run's candidates are in each state (``failed``: done, unsuccessful)."""

    queued: int = 0
    waiting: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.waiting + self.running + self.done


@dataclass(frozen=True)
class RunSummary:
    """A run as the runs list shows it."""

    run_id: str
    competition: str | None
    objective: str
    execution_mode: str
    judge: str
    timestamp: datetime  # when it was planned (UTC)
    status: str  # queued | running | finished | failed
    candidates_total: int
    winner_id: str | None
    winner_score: float | None
    published_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    states: StateCounts


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int  # items over all pages
    page: int  # 1-based
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


@dataclass(frozen=True)
class CandidateState:
    """One candidate's in-flight state (small: what a live page polls)."""

    candidate_id: str
    name: str
    position: int
    state: str  # queued | waiting | running | done
    worker: str | None
    attempt: int | None
    started_at: datetime | None
    finished_at: datetime | None
    success: bool | None
    runtime_seconds: float | None
    error_message: str | None


@dataclass(frozen=True)
class CandidateEntry:
    """A candidate in a run: who it is, its state, its result once done, its score once
    judged (``score`` and ``result`` are the run directory's own record types)."""

    info: CandidateInfo
    position: int
    state: str
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None
    result: CandidateResult | None  # None until done
    score: Score | None  # None until the run is judged


@dataclass(frozen=True)
class RunDetail:
    """One run with every candidate, its result and score, in manifest order."""

    summary: RunSummary
    candidates: list[CandidateEntry]
    definition_sha256: str
    run_dir: str  # on the machine that wrote it
    notes: list[str]
    discord: dict[str, Any] | None
    sandboxes_alive: int | None
    winner_artifact: str | None = None
    extra: dict[str, Any] | None = None  # ForgeResult fields without a column
    # Repeated trials: every done trial's result, candidate by candidate in trial order
    # (each candidate's ``result`` above is its representative trial).
    trial_results: list[CandidateResult] = field(default_factory=list)

    def forge_result(self) -> ForgeResult | None:
        """The ForgeResult (summary.json, plus the Discord record) of a finished run."""
        s = self.summary
        if s.status != "finished":
            return None
        scored = [c.score for c in self.candidates if c.score is not None]
        return ForgeResult(
            run_id=s.run_id, objective=s.objective, timestamp=_iso(s.timestamp, "seconds"),
            execution_mode=s.execution_mode, candidates=[c.info for c in self.candidates],
            scores=sorted(scored, key=lambda x: x.rank), winner_id=s.winner_id,
            winner_score=s.winner_score, winner_artifact=self.winner_artifact,
            artifacts_dir=self.run_dir,
            results=[c.result or CandidateResult(candidate_id=c.info.id)
                     for c in self.candidates],
            judge=s.judge, competition=s.competition,
            definition_sha256=self.definition_sha256, notes=list(self.notes),
            discord=self.discord, sandboxes_alive=self.sandboxes_alive,
            trial_results=list(self.trial_results),
            **_known(ForgeResult, self.extra))


@dataclass(frozen=True)
class HistoryEntry:
    """A candidate's showing in one run (its history is a list of these, newest first)."""

    run_id: str
    competition: str | None
    timestamp: datetime
    run_status: str
    candidates_total: int
    name: str
    state: str
    success: bool | None
    runtime_seconds: float | None
    total_score: float | None
    quality_score: float | None
    speed_score: float | None
    qualified: bool | None
    rank: int | None
    won: bool


@dataclass(frozen=True)
class CompetitionSummary:
    """A competition as seen through its runs (ad-hoc runs are ``name=None``)."""

    name: str | None
    runs: int
    last_run: RunSummary | None
    last_finished: RunSummary | None  # whose winner is "last week's winner"


# ---------------------------------------------------------------------------- helpers


def _iso(value: datetime | None, timespec: str) -> str | None:
    """Times as the records write them: ISO-8601 UTC (``+00:00``) at their precision,
    finer when the stored value has it."""
    if value is None:
        return None
    if timespec == "seconds" and value.microsecond:
        timespec = "microseconds"
    elif timespec == "milliseconds" and value.microsecond % 1000:
        timespec = "microseconds"
    return value.isoformat(timespec=timespec)


_SUMMARY_COLUMNS = (Run.run_id, Run.competition, Run.objective, Run.execution_mode,
                    Run.judge, Run.timestamp, Run.status, Run.candidates_total,
                    Run.winner_id, Run.winner_score, Run.published_at, Run.started_at,
                    Run.finished_at, Run.error)


def _counts(conn: Connection, run_ids: Sequence[str]) -> dict[str, StateCounts]:
    """State counts of the runs (trial 0), in one grouped query."""
    if not run_ids:
        return {}
    failed = func.sum(case((and_(Result.state == "done", Result.success.is_(False)), 1),
                           else_=0))
    rows = conn.execute(
        select(Result.run_id, Result.state, func.count(), failed)
        .where(Result.run_id.in_(list(run_ids)), Result.trial == 0)
        .group_by(Result.run_id, Result.state)).all()
    acc: dict[str, dict[str, int]] = {rid: {} for rid in run_ids}
    for rid, state, n, nfailed in rows:
        acc[rid][state] = acc[rid].get(state, 0) + n
        acc[rid]["failed"] = acc[rid].get("failed", 0) + int(nfailed or 0)
    return {rid: StateCounts(**{k: v for k, v in c.items()
                                if k in StateCounts.__dataclass_fields__})
            for rid, c in acc.items()}


def _summaries(conn: Connection, rows) -> list[RunSummary]:
    rows = list(rows)
    counts = _counts(conn, [r.run_id for r in rows])
    return [RunSummary(*r, states=counts.get(r.run_id, StateCounts())) for r in rows]


# ---------------------------------------------------------------------------- queries


def list_runs(conn: Connection, *, competition: str | None = None,
              status: str | None = None, page: int = 1, per_page: int = 50
              ) -> Page[RunSummary]:
    """Runs newest first, optionally of one competition and/or in one status."""
    page, per_page = max(1, int(page)), max(1, min(int(per_page), 500))
    where = []
    if competition is not None:
        where.append(Run.competition == competition)
    if status is not None:
        where.append(Run.status == status)
    total = conn.execute(select(func.count()).select_from(Run).where(*where)).scalar_one()
    rows = conn.execute(select(*_SUMMARY_COLUMNS).where(*where)
                        .order_by(desc(Run.timestamp), desc(Run.run_id))
                        .limit(per_page).offset((page - 1) * per_page))
    return Page(_summaries(conn, rows), int(total), page, per_page)


def run_summary(conn: Connection, run_id: str) -> RunSummary | None:
    found = _summaries(conn, conn.execute(select(*_SUMMARY_COLUMNS)
                                          .where(Run.run_id == run_id)))
    return found[0] if found else None


def run_states(conn: Connection, run_id: str, trial: int = 0) -> list[CandidateState]:
    """Every candidate's in-flight state, in manifest order (no outputs: cheap to poll)."""
    rows = conn.execute(
        select(Candidate.candidate_id, Candidate.name, Candidate.position, Result.state,
               Result.worker, Result.attempt, Result.started_at, Result.finished_at,
               Result.success, Result.runtime_seconds, Result.error_message)
        .join(Result, (Result.run_id == Candidate.run_id)
              & (Result.candidate_id == Candidate.candidate_id) & (Result.trial == trial))
        .where(Candidate.run_id == run_id).order_by(Candidate.position))
    return [CandidateState(*r) for r in rows]


def get_run(conn: Connection, run_id: str, trial: int = 0) -> RunDetail | None:
    """One run with its candidates, their results and scores; None if unknown."""
    summary = run_summary(conn, run_id)
    if summary is None:
        return None
    run = conn.execute(select(Run.definition_sha256, Run.run_dir, Run.notes, Run.discord,
                              Run.sandboxes_alive, Run.extra).where(Run.run_id == run_id)).one()
    trials = int((run.extra or {}).get("trials") or 1)
    rows: dict[str, dict[int, Any]] = {}
    for r in conn.execute(select(Result.__table__).where(Result.run_id == run_id)
                          .order_by(Result.candidate_id, Result.trial)):
        rows.setdefault(r.candidate_id, {})[r.trial] = r
    # A run of repeated trials shows each candidate by its representative trial (the
    # ranking's best_trial, 1-based), as its run directory does.
    best = {s.get("candidate_id"): int(s.get("best_trial") or 1) - 1
            for s in (run.extra or {}).get("trial_summaries") or [] if isinstance(s, dict)}
    entries, winner_artifact, trial_results = [], None, []
    for c in conn.execute(select(Candidate.__table__).where(Candidate.run_id == run_id)
                          .order_by(Candidate.position)):
        mine = rows.get(c.candidate_id, {})
        if trials > 1:
            trial_results += [_result_record(r) for _, r in sorted(mine.items())
                              if r.state == "done"]
        res = mine.get(best.get(c.candidate_id, trial) if trials > 1 else trial)
        record = _result_record(res) if res is not None and res.state == "done" else None
        if record is not None and c.candidate_id == summary.winner_id:
            winner_artifact = record.artifact_content
        entries.append(CandidateEntry(
            info=CandidateInfo(id=c.candidate_id, name=c.name, description=c.description,
                               script=c.script, artifact=c.artifact,
                               content_sha256=c.content_sha256),
            position=c.position, state=res.state if res is not None else "queued",
            worker=res.worker if res is not None else None,
            started_at=res.started_at if res is not None else None,
            finished_at=res.finished_at if res is not None else None,
            result=record, score=_score_record(c)))
    return RunDetail(summary=summary, candidates=entries,
                     definition_sha256=run.definition_sha256, run_dir=run.run_dir,
                     notes=list(run.notes or []), discord=run.discord,
                     sandboxes_alive=run.sandboxes_alive, winner_artifact=winner_artifact,
                     extra=run.extra, trial_results=trial_results)


def _result_record(r) -> CandidateResult:
    """A ``results`` row as the CandidateResult it was written from."""
    return CandidateResult(
        candidate_id=r.candidate_id, sandbox_id=r.sandbox_id, success=bool(r.success),
        output=r.output or "", artifact_content=r.artifact_content,
        runtime_seconds=r.runtime_seconds if r.runtime_seconds is not None else 0.0,
        error_message=r.error_message, execution_mode=r.execution_mode or "local",
        exit_code=r.exit_code, timed_out=bool(r.timed_out),
        started_at=_iso(r.started_at, "milliseconds"),
        finished_at=_iso(r.finished_at, "milliseconds"), worker=r.worker,
        attempt=r.attempt if r.attempt is not None else 1,
        output_dropped_bytes=r.output_dropped_bytes or 0,
        artifact_truncated=bool(r.artifact_truncated), warnings=list(r.warnings or []),
        isolation=r.isolation, log=list(r.log or []), timings=dict(r.timings or {}),
        trial=r.trial, **_known(CandidateResult, r.extra))


def _score_record(c) -> Score | None:
    """A ``candidates`` row's Score; None before the run is judged."""
    if c.total_score is None:
        return None
    return Score(candidate_id=c.candidate_id, success=c.score_success or 0.0,
                 quality_score=c.quality_score or 0.0, speed_score=c.speed_score or 0.0,
                 total_score=c.total_score, qualified=bool(c.qualified),
                 gates=dict(c.gates or {}), disqualified_reason=c.disqualified_reason,
                 quality_details=dict(c.quality_details or {}), rank=c.rank or 0,
                 **_known(Score, c.extra))


def _known(cls: type, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The ``extra`` values that are fields of ``cls`` today (a field since removed, or
    one a newer writer added, is ignored: records read forward and backward)."""
    if not extra:
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in extra.items() if k in names}


def candidate_history(conn: Connection, candidate_id: str, *,
                      competition: str | None = None, limit: int = 100,
                      trial: int = 0) -> list[HistoryEntry]:
    """The candidate's runs, newest first: its score, rank and outcome in each."""
    stmt = (select(Run.run_id, Run.competition, Run.timestamp, Run.status,
                   Run.candidates_total, Candidate.name, Result.state, Result.success,
                   Result.runtime_seconds, Candidate.total_score, Candidate.quality_score,
                   Candidate.speed_score, Candidate.qualified, Candidate.rank,
                   Run.winner_id)
            .join(Run, Run.run_id == Candidate.run_id)
            .outerjoin(Result, (Result.run_id == Candidate.run_id)
                       & (Result.candidate_id == Candidate.candidate_id)
                       & (Result.trial == trial))
            .where(Candidate.candidate_id == candidate_id)
            .order_by(desc(Run.timestamp), desc(Run.run_id)).limit(max(1, int(limit))))
    if competition is not None:
        stmt = stmt.where(Run.competition == competition)
    return [HistoryEntry(*row[:6], state=row[6] or "queued", success=row[7],
                         runtime_seconds=row[8], total_score=row[9], quality_score=row[10],
                         speed_score=row[11], qualified=row[12], rank=row[13],
                         won=row[14] == candidate_id)
            for row in conn.execute(stmt)]


def competitions(conn: Connection) -> list[CompetitionSummary]:
    """Every competition with runs: how many, the newest, the newest finished."""
    out = []
    for name, n in conn.execute(select(Run.competition, func.count())
                                .group_by(Run.competition).order_by(Run.competition)):
        same = (Run.competition == name) if name is not None else Run.competition.is_(None)
        newest = _summaries(conn, conn.execute(
            select(*_SUMMARY_COLUMNS).where(same)
            .order_by(desc(Run.timestamp), desc(Run.run_id)).limit(1)))
        done = _summaries(conn, conn.execute(
            select(*_SUMMARY_COLUMNS).where(same, Run.status == "finished")
            .order_by(desc(Run.timestamp), desc(Run.run_id)).limit(1)))
        out.append(CompetitionSummary(name=name, runs=int(n),
                                      last_run=newest[0] if newest else None,
                                      last_finished=done[0] if done else None))
    return out


def has_runs(conn: Connection) -> bool:
    return conn.execute(select(Run.run_id).limit(1)).first() is not None


def season_runs(conn: Connection, competition: str, *, since: datetime | None = None,
                exclude: str | None = None) -> list[SeasonRun]:
    """The finished runs of ``competition`` (its season) as ``worker.judge.season``
    records, oldest first: each candidate's rank, score (the mean, for repeated trials)
    and whether it qualified, and the run's winner. ``exclude``: a run id left out (the
    run being judged, added by its caller). One query."""
    stmt = (select(Run.run_id, Run.timestamp, Run.winner_id, Candidate.candidate_id,
                   Candidate.name, Candidate.rank, Candidate.total_score, Candidate.qualified)
            .join(Candidate, Candidate.run_id == Run.run_id)
            .where(Run.competition == competition, Run.status == "finished",
                   Candidate.rank.is_not(None))
            .order_by(Run.timestamp, Run.run_id, Candidate.rank))
    if since is not None:
        stmt = stmt.where(Run.timestamp >= since)
    if exclude is not None:
        stmt = stmt.where(Run.run_id != exclude)
    runs: dict[str, tuple[datetime, str | None, list[Placing]]] = {}
    for row in conn.execute(stmt):
        entry = runs.setdefault(row.run_id, (row.timestamp, row.winner_id, []))
        entry[2].append(Placing(row.candidate_id, int(row.rank), float(row.total_score or 0.0),
                                bool(row.qualified), row.name or ""))
    out = []
    for run_id, (when, winner, placings) in runs.items():
        ids = {p.candidate_id for p in placings}
        out.append(SeasonRun(run_id, _iso(when, "seconds") or "", tuple(placings),
                             winner if winner in ids else None))
    return out
