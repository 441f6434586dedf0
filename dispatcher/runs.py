"""Run records: what a dispatcher published, kept in the result backend.

A distributed run outlives its dispatcher, so before publishing the dispatcher stores
a run record (the RunSpec, every task, the RunRequest it was planned from, the
definition fingerprint) with the result TTL, and marks it ``published`` once
the whole chord is out. ``forge status`` reads it for a run that has no run directory
yet, and tells a run that is merely in progress from one whose fan-out was cut short
(the dispatcher died mid-publish: the chord's body can never fire). ``forge resume``
re-plans a run from it. Embedded runs live and die with their process: no record.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from dispatcher.request import RunRequest
from worker import celery_compat, config, keys, states
from worker.records import CandidateResult, RunSpec, unit_name
from worker.settings import settings

logger = logging.getLogger("dream_foundry")

# How long a record may stay "publishing" before its fan-out counts as cut short.
# Publishing N tasks takes about a millisecond each; the default is very generous.
FANOUT_GRACE = settings.fanout_grace


@dataclass
class RunRecord:
    run: dict[str, Any]  # RunSpec.to_dict()
    tasks: list[dict[str, Any]]  # CandidateTask.to_dict() less the script (sha256 kept)
    request: dict[str, Any] = field(default_factory=dict)  # RunPlan.request.to_dict()
    status: str = "publishing"  # publishing | published
    created_at: float = 0.0  # epoch seconds
    published_at: float | None = None
    resumes: int = 0

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def spec(self) -> RunSpec:
        return RunSpec.from_dict(self.run)

    @property
    def run_request(self) -> RunRequest:
        """What was asked, resolved, as the plan kept it (``forge resume`` re-plans it)."""
        return RunRequest.from_dict(self.request)

    @property
    def task_ids(self) -> dict[str, str]:
        """unit (candidate id, ``id#k`` for trial k of several) -> task id, in publish
        order."""
        out = {}
        for t in self.tasks:
            trial, trials = int(t.get("trial") or 0), int(t.get("trials") or 1)
            out[unit_name(t["candidate_id"], trial, trials)] = keys.candidate_task_id(
                t["run_id"], t["candidate_id"], trial, trials)
        return out

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: bytes | str) -> RunRecord:
        data = json.loads(raw)
        if "request" not in data and isinstance(data.get("source"), dict):
            # Written before requests were stored: its overrides and RunSpec say the same.
            data["request"] = RunRequest.from_legacy_source(
                data.get("run") or {}, data["source"]).to_dict()
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _client(app):
    """The result backend's Redis client, or None (embedded mode, other backends)."""
    if not config.is_distributed():
        return None
    return celery_compat.redis_client(app.backend)


def _ttl() -> int:
    # start-up: the Celery app loads on first use (`forge --help` imports this module)
    from worker.app import RESULT_EXPIRES

    return max(int(RESULT_EXPIRES), 60)


def save(app, record: RunRecord) -> None:
    client = _client(app)
    if client is not None:
        client.set(keys.run_record_key(record.run_id), record.to_json(), ex=_ttl())


def load(app, run_id: str) -> RunRecord | None:
    client = _client(app)
    if client is None:
        return None
    raw = client.get(keys.run_record_key(run_id))
    if raw is None:  # published by a dispatcher from before worker/keys.py
        raw = client.get(keys.LEGACY_RUN_RECORD_PREFIX + run_id)
    return RunRecord.from_json(raw) if raw else None


def record_for(plan) -> RunRecord:
    tasks = [{k: v for k, v in t.to_dict().items() if k != "script"} for t in plan.tasks]
    return RunRecord(run=plan.run.to_dict(), tasks=tasks, request=plan.request.to_dict(),
                     created_at=time.time())


def before_publish(app, plan) -> RunRecord | None:
    """Store the record (status ``publishing``) before the first task goes out."""
    if _client(app) is None:
        return None
    record = load(app, plan.run.run_id)
    fresh = record_for(plan)
    if record is not None:  # a resume: keep the original creation and count it
        fresh.created_at, fresh.resumes = record.created_at, record.resumes + 1
        fresh.run = record.run
    save(app, fresh)
    return fresh


def after_publish(app, record: RunRecord | None) -> None:
    """Mark the record ``published``. Every task is out by now: if the result backend is
    gone this moment, the run goes on (its wait meets the outage with the broker grace)
    and the record keeps saying ``publishing``, which `forge status` reports as possibly
    cut short and `forge resume` completes without running anything twice."""
    if record is None:
        return
    record.status, record.published_at = "published", time.time()
    try:
        save(app, record)
    except Exception as exc:  # noqa: BLE001 - redis-py raises several kinds
        logger.warning("run %s: every task is published, but its record could not be marked "
                       "published (%s: %s)", record.run_id, type(exc).__name__, exc)


def task_metas(app, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """task id -> its meta in the result backend (absent: no state at all)."""
    return states.task_metas(app.backend, task_ids)


def kept_results(app, task_ids: list[str]) -> list[dict[str, Any]]:
    """The stored CandidateResult dicts of the tasks that finished (SUCCESS meta)."""
    return states.stored_results(app.backend, task_ids)


def broker_task_ids(app, wanted: set[str]) -> tuple[set[str], set[str]]:
    """Which of ``wanted`` sit in the broker: (in the queue, delivered to a worker but not
    yet acknowledged)."""
    client = _client(app)
    if client is None or not wanted:
        return set(), set()
    return celery_compat.broker_task_ids(client, app.conf.task_default_queue, wanted)


def queued_task_ids(app, wanted: set[str]) -> set[str]:
    """Which of ``wanted`` sit in the broker: in the queue, or delivered but unacked."""
    queued, delivered = broker_task_ids(app, wanted)
    return queued | delivered


RECHECK = 0.25  # seconds between the two looks that find a candidate lost


@dataclass
class Whereabouts:
    """Where a run's unfinished candidates are (candidate ids)."""

    queued: list[str] = field(default_factory=list)  # waiting in the broker's queue
    delivered: list[str] = field(default_factory=list)  # with a worker, not acknowledged
    lost: list[str] = field(default_factory=list)  # neither: purged, or the broker lost it


def locate(app, unfinished: dict[str, str], recheck: float = RECHECK) -> Whereabouts:
    """Find each unfinished candidate (candidate id -> task id) in the broker.

    A message moves between the queue and the unacked hash in more than one step, and a
    finishing task stores its result before it leaves the unacked hash, so one look can
    miss a candidate that is there: it counts as lost only if a second look, ``recheck``
    seconds later, finds it neither in the broker nor finished.
    """
    queued, delivered = broker_task_ids(app, set(unfinished.values()))
    absent = {c: t for c, t in unfinished.items() if t not in queued and t not in delivered}
    if absent:
        time.sleep(recheck)
        q2, d2 = broker_task_ids(app, set(absent.values()))
        queued |= q2
        finished = {t for t, m in task_metas(app, list(absent.values())).items()
                    if (m or {}).get("status") == "SUCCESS"}
        delivered |= d2 | (finished - q2)
    out = Whereabouts()
    for cid, tid in unfinished.items():
        (out.queued if tid in queued else out.delivered if tid in delivered
         else out.lost).append(cid)
    return out


def some(ids: list[str], shown: int = 10) -> str:
    """``a, b, c`` or ``a, b, ... and 12 more``."""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def busy_text(where: Whereabouts) -> str:
    """The queued and delivered candidates, said truthfully (the queue cannot tell a
    running candidate from one whose worker died)."""
    # start-up: the Celery app loads on first use (`forge --help` imports this module)
    from worker.app import VISIBILITY_TIMEOUT

    parts = []
    if where.queued:
        parts.append(f"{len(where.queued)} queued")
    if where.delivered:
        parts.append(
            f"{len(where.delivered)} delivered to a worker and not yet acknowledged "
            f"({some(where.delivered)}): running, or, if that worker died, handed out again "
            f"after the visibility timeout ({VISIBILITY_TIMEOUT}s); the queue cannot tell "
            "which")
    return "; ".join(parts)


@dataclass
class RunProgress:
    """What ``forge status`` says of a run without a run directory."""

    record: RunRecord
    total: int
    done: int = 0
    failed: int = 0
    running: int = 0  # delivered to a worker (published runs), or in a running state
    published: int = 0
    body_state: str | None = None
    missing: list[str] = field(default_factory=list)  # candidate ids without SUCCESS
    queued: int | None = None  # published runs: waiting in the broker's queue
    lost: list[str] = field(default_factory=list)  # published, unfinished, not in the broker

    @property
    def cut_short(self) -> bool:
        """Published only in part, and the dispatcher is long gone: the body never fires."""
        if self.record.status == "published" or self.published >= self.total:
            return False
        return time.time() - self.record.created_at > FANOUT_GRACE


def progress(app, record: RunRecord) -> RunProgress:
    ids = record.task_ids
    metas = task_metas(app, list(ids.values()))
    out = RunProgress(record=record, total=len(ids))
    stateless = set()
    for cid, tid in ids.items():
        meta = metas.get(tid)
        status = meta.get("status") if meta else None
        if status == "SUCCESS":
            res = meta.get("result")
            ok = isinstance(res, dict) and CandidateResult.from_dict(res).success
            out.done += ok
            out.failed += not ok
            continue
        out.missing.append(cid)
        if status in ("STARTED", "PROGRESS", "RETRY"):
            out.running += 1
        elif status is None or status == "PENDING":
            stateless.add(tid)
    if record.status == "published":
        out.published = out.total
        where = locate(app, {cid: ids[cid] for cid in out.missing})
        out.queued, out.running, out.lost = len(where.queued), len(where.delivered), where.lost
    else:
        out.published = out.total - len(stateless) + len(queued_task_ids(app, stateless))
    body = task_metas(app, [keys.body_task_id(record.run_id)])
    out.body_state = next(iter(body.values()), {}).get("status")
    return out


def describe(p: RunProgress) -> tuple[str, int]:
    """One line for ``forge status`` and its exit code (1: needs a resume)."""
    rid = p.record.run_id
    finished = p.done + p.failed
    if p.body_state == "SUCCESS":
        return (f"run {rid}: finished on the workers, but its run directory is not here "
                f"(written to {p.record.spec.artifacts_dir})"), 0
    if p.cut_short:
        return (f"run {rid}: incomplete: fan-out cut short ({p.published} of {p.total} "
                f"candidates published; {finished} finished). The dispatcher died while "
                f"publishing; re-run the missing candidates with 'forge resume {rid}'"), 1
    if p.record.status == "publishing":
        return (f"run {rid}: publishing ({p.published} of {p.total} candidates out so far, "
                f"{finished} finished)"), 0
    queued = p.total - finished - p.running if p.queued is None else p.queued
    line = (f"run {rid}: running ({finished} done / {p.total} total; {p.running} running, "
            f"{queued} queued; {p.failed} failed)")
    if p.lost:
        return (f"{line}; {len(p.lost)} lost, neither queued nor running ({some(p.lost)}): "
                f"re-run them with 'forge resume {rid}'"), 1
    return line, 0


def status_pending(app, run_id: str) -> tuple[str, int] | None:
    """The status line of a run known only from its record, or None if none is known."""
    if _client(app) is None:
        return None
    try:
        record = load(app, run_id)
    except Exception as exc:  # noqa: BLE001 - redis connection errors and kin
        return (f"cannot read run {run_id!r} from the result backend "
                f"({type(exc).__name__}); is Redis up?"), 2
    if record is None:
        return None
    return describe(progress(app, record))
