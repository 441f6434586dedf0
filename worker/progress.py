"""A candidate task's progress as others see it, and coalescing its PROGRESS writes.

Every stored PROGRESS meta is a Redis round trip carrying the whole log window, and a
candidate's lifecycle logs most of its lines within milliseconds (create, upload,
execute). The first line is stored at once (the dispatcher sees the task running);
later lines are stored at most every ``interval`` seconds, so a line announcing a long
wait ("Executing...") still shows within ``interval``. The final result carries every
line, so nothing is lost by coalescing.

Only the first store runs in the task's own thread. Every later one is handed to the
process's few progress threads (``_Stores``): a store is a GET and a SET on the result
backend, and the lines after the first are logged while the candidate holds a sandbox
and its budget slot, where those round trips (a thread started per timer, before) were
time every other waiting candidate waited too.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

from worker.sandbox.base import CapacityState
from worker.settings import settings
from worker.store.hooks import mark_state

logger = logging.getLogger("dream_foundry")

INTERVAL = settings.progress_interval_ms / 1000
LOG_WINDOW = 40  # newest log lines kept in the task's PROGRESS meta


class _Stores:
    """Due progress stores of this process, run by ``THREADS`` daemon threads (started
    on first use, again after a fork): scheduling one costs the caller a heap push."""

    THREADS = 4  # a store waits on Redis; a few in flight keep up with many candidates

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, ProgressWriter]] = []
        self._seq = itertools.count()
        self._pid = 0

    def schedule(self, writer: ProgressWriter, when: float) -> None:
        with self._cond:
            if self._pid != os.getpid():  # threads do not survive a fork
                self._pid = os.getpid()
                for i in range(self.THREADS):
                    threading.Thread(target=self._run, name=f"forge-progress-{i}",
                                     daemon=True).start()
            heapq.heappush(self._due, (when, next(self._seq), writer))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
                writer = heapq.heappop(self._due)[2]
            try:
                writer._fire()
            except Exception:  # noqa: BLE001 - progress is best effort; the thread lives on
                logger.warning("progress store failed", exc_info=True)


_STORES = _Stores()


class ProgressWriter:
    def __init__(self, store: Callable[[], None], interval: float = INTERVAL,
                 stores: _Stores = _STORES):
        self._store = store
        self.interval = interval
        self._stores = stores
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._scheduled = False
        self._closed = False

    def line_added(self) -> None:
        with self._lock:
            if self._closed or self._scheduled:
                return
            if self._last == float("-inf"):  # the first line: the task shows as running
                self._write()
                return
            self._scheduled = True
            self._stores.schedule(self, max(time.monotonic(), self._last + self.interval))

    def _fire(self) -> None:
        with self._lock:
            self._scheduled = False
            if not self._closed:
                self._write()

    def _write(self) -> None:  # under the lock
        self._last = time.monotonic()
        self._store()

    def close(self) -> None:
        """No write after this returns (the task's result is about to be stored): a
        store in flight finishes first (it holds the lock), a scheduled one is dropped."""
        with self._lock:
            self._closed = True


class CandidateProgress:
    """What a running candidate task shows others: its log lines (Celery ``PROGRESS``
    meta, the newest ``LOG_WINDOW`` of them), and its capacity state (Flower's task
    events, the run store).

    The task's ``request`` is kept: it is thread-local, and the progress threads that
    store later lines have none of their own.
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
