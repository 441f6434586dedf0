"""Following a run through Celery's own task states (no side channel).

Each ``run_candidate`` task publishes ``PROGRESS`` meta with its newest log lines and a
sequence number; the tracker reads every unfinished task's meta in one ``mget`` per
poll (Redis or the embedded memory backend alike) and hands each new line to the
caller exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.lifecycle import EXECUTING_LINE
from worker.records import CandidateResult
from worker.sandbox.base import WAITING_LINE
from worker.states import task_metas

LogCallback = Callable[[str, str], None]

READY = {"SUCCESS", "FAILURE", "REVOKED"}


@dataclass
class CandidateState:
    candidate_id: str
    task_id: str
    state: str = "QUEUED"  # QUEUED, RUNNING, WAITING (for a sandbox slot), DONE, FAILED
    seen: int = 0
    first_seen: float | None = None
    runtime: float | None = None
    last_line: str = ""
    worker: str | None = None
    attempt: int = 1
    executing: bool = False  # its script has started (its sandbox is made)
    result: CandidateResult | None = None
    timeline: list[str] = field(default_factory=list)


class RunTracker:
    def __init__(self, app, task_ids: dict[str, str], on_log: LogCallback | None = None):
        self.backend = app.backend
        self.states = {cid: CandidateState(cid, tid) for cid, tid in task_ids.items()}
        self.on_log = on_log

    def _fetch(self, ids: list[str]) -> dict[str, Any]:
        """candidate id -> its task's meta, for the candidates that have one."""
        by_task = {self.states[c].task_id: c for c in ids}
        metas = task_metas(self.backend, list(by_task))
        return {by_task[tid]: meta for tid, meta in metas.items()}

    def _emit(self, st: CandidateState, line: str) -> None:
        st.last_line = line
        if line == EXECUTING_LINE:
            st.executing = True
        if st.state in ("RUNNING", "WAITING"):
            st.state = "WAITING" if line.startswith(WAITING_LINE) else "RUNNING"
        if self.on_log is not None:
            self.on_log(st.candidate_id, line)

    def poll(self, chunk: int = 1000) -> None:
        """Read the state of every unfinished candidate once."""
        pending = [c for c, s in self.states.items()
                   if s.state in ("QUEUED", "RUNNING", "WAITING")]
        now = time.monotonic()
        for i in range(0, len(pending), chunk):
            metas = self._fetch(pending[i:i + chunk])
            for cid, meta in metas.items():
                st = self.states[cid]
                status = meta.get("status")
                info = meta.get("result")
                if status in ("STARTED", "PROGRESS") and st.state == "QUEUED":
                    st.state = "RUNNING"
                    st.first_seen = now
                if status == "PROGRESS" and isinstance(info, dict):
                    self._new_lines(st, info)
                elif status == "SUCCESS" and isinstance(info, dict):
                    self._finish(st, CandidateResult.from_dict(info))
                elif status in READY:
                    self._finish(st, CandidateResult(
                        candidate_id=cid, error_message=f"task ended in state {status}: {info}"))

    def _new_lines(self, st: CandidateState, info: dict) -> None:
        seq = int(info.get("seq", 0))
        lines = info.get("log") or []
        st.worker = info.get("worker") or st.worker
        attempt = int(info.get("attempt", 1))
        if attempt != st.attempt:  # a redelivery starts its log afresh
            st.attempt, st.seen = attempt, 0
            self._emit(st, f"[Warn] Redelivered (attempt {attempt})")
        if seq <= st.seen:
            return
        fresh = lines[-(seq - st.seen):] if seq - st.seen <= len(lines) else lines
        for line in fresh:
            self._emit(st, line)
        st.seen = seq

    def _finish(self, st: CandidateState, result: CandidateResult) -> None:
        st.result = result
        st.worker = result.worker or st.worker
        st.runtime = result.runtime_seconds
        st.state = "DONE" if result.success else "FAILED"
        if result.attempt != st.attempt:
            st.attempt, st.seen = result.attempt, 0
        if result.log:
            for line in result.log[st.seen:]:
                self._emit(st, line)
            st.seen = len(result.log)
        elif not result.success:
            self._emit(st, f"[Error] {result.error_message}")

    @property
    def counts(self) -> dict[str, int]:
        out = {"QUEUED": 0, "RUNNING": 0, "WAITING": 0, "DONE": 0, "FAILED": 0}
        for s in self.states.values():
            out[s.state] += 1
        return out

    @property
    def finished(self) -> bool:
        return all(s.state in ("DONE", "FAILED") for s in self.states.values())

    @property
    def all_started(self) -> bool:
        """Every candidate's script runs or has run: no sandbox is still being made."""
        return all(s.executing or s.state in ("DONE", "FAILED") for s in self.states.values())
