"""A candidate task's progress as others see it, and coalescing its PROGRESS writes.

Every stored PROGRESS meta is a Redis round trip carrying the whole log window, and a
candidate's lifecycle logs most of its lines within milliseconds (create, upload,
execute). The first line is stored at once (the dispatcher sees the task running);
later lines are stored at most every ``interval`` seconds, by a timer when nothing
else comes, so a line announcing a long wait ("Executing...") still shows within
``interval``. The final result carries every line, so nothing is lost by coalescing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.sandbox.base import CapacityState
from worker.settings import settings
from worker.store.hooks import mark_state

logger = logging.getLogger("dream_foundry")

INTERVAL = settings.progress_interval_ms / 1000
LOG_WINDOW = 40  # newest log lines kept in the task's PROGRESS meta


class ProgressWriter:
    def __init__(self, store: Callable[[], None], interval: float = INTERVAL):
        self._store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._timer: threading.Timer | None = None
        self._closed = False

    def line_added(self) -> None:
        with self._lock:
            if self._closed or self._timer is not None:
                return
            wait = self._last + self.interval - time.monotonic()
            if wait <= 0:
                self._write()
                return
            self._timer = threading.Timer(wait, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if not self._closed:
                self._write()

    def _write(self) -> None:  # under the lock
        self._last = time.monotonic()
        self._store()

    def close(self) -> None:
        """No write after this returns (the task's result is about to be stored)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class CandidateProgress:
    """What a running candidate task shows others: its log lines (Celery ``PROGRESS``
    meta, the newest ``LOG_WINDOW`` of them), and its capacity state (Flower's task
    events, the run store).

    The task's ``request`` is kept: it is thread-local, and the writer's timer thread
    has none of its own.
    """

    def __init__(self, task, run_id: str, candidate_id: str, worker: str, attempt: int,
                 entered: float, trial: int = 0):
        self.task = task
        self.trial = trial  # which trial of the candidate (repeated trials; 0-based)
        self.request = task.request
        self.run_id, self.candidate_id = run_id, candidate_id
        self.worker, self.attempt, self.entered = worker, attempt, entered
        self.lines: list[str] = []
        self.seconds = 0.0  # time spent storing PROGRESS meta
        self.delivered = bool(self.request.id) and not self.request.is_eager
        # Coalesces bursts of lines into one write; closed before the result is returned
        # so no PROGRESS write can land after it.
        self._writer = ProgressWriter(self._store)

    def log(self, message: str) -> None:
        self.lines.append(message)
        # Every line reaches the dispatcher (PROGRESS) and result.json; the worker's log
        # gets them at DEBUG and one summary line at INFO (5,000 candidates x 10 lines
        # was most of a busy worker's log, and a measurable share of its CPU).
        logger.debug("[%s] %s %s", self.run_id, self.candidate_id, message)
        if self.delivered:
            self._writer.line_added()

    def on_state(self, state: CapacityState) -> None:
        """Flower shows it: its event state turns an unknown ``task-<x>`` event into
        state ``<X>`` (WAITING, then RUNNING once the sandbox has its slot); the run
        store shows it too."""
        mark_state(self.run_id, self.candidate_id, state, self.worker, trial=self.trial)
        if self.delivered:
            try:
                self.task.send_event(f"task-{state}")
            except Exception as exc:  # noqa: BLE001 - monitoring must not fail a task
                logger.debug("task-%s event not sent: %s", state, exc)

    def close(self) -> None:
        self._writer.close()

    def _store(self) -> None:
        t = time.monotonic()
        try:  # best effort: no retries, a Redis blip must not fail the task
            # update_state() with this task's own request, from any thread
            self.task.backend.store_result(self.request.id, state="PROGRESS",
                                           request=self.request, max_retries=0, result={
                "candidate_id": self.candidate_id,
                "seq": len(self.lines),
                "log": self.lines[-LOG_WINDOW:],
                "worker": self.worker,
                "attempt": self.attempt,
                "started": self.entered,  # epoch: the dashboard's elapsed time counts from it
            })
        except Exception as exc:  # noqa: BLE001 - e.g. redis ConnectionError
            logger.warning("[%s] %s progress not stored: %s", self.run_id,
                           self.candidate_id, type(exc).__name__)
        self.seconds += time.monotonic() - t
