"""Where runs reach the store, all best effort: a store failure never fails a run.

* the dispatcher, at publish: :func:`record_published` (the run and candidates queued);
* each candidate task, through Celery's ``task_prerun``/``task_postrun`` signals: running
  when it starts, done with its result when it finishes (one-row updates, written by a
  thread of the process so the task never waits for them);
* the chord body: :func:`record_finished`, the whole run in one transaction. If that
  fails the run directory (already written) has it all: an outbox entry names it, one
  log line says so (URL without password), and the next drain loads it;
* a failed chord body (``task_failure``): the run marked failed;
* draining owed writes: a worker starting, beat's ``worker.store.drain_outbox`` every
  ``FORGE_STORE_RETRY_INTERVAL`` seconds, each finished run, and ``forge import``.

Imported by the worker at start (the app's ``include``); it loads SQLAlchemy only when
a store is first used (a distributed worker before it forks its pool processes).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from celery import shared_task
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
    worker_ready,
)

from worker import config, observability
from worker.records import CandidateResult, ForgeResult, RunSpec
from worker.sandbox.base import CapacityState
from worker.settings import settings
from worker.store import importer

if TYPE_CHECKING:
    from worker.store.api import Store

logger = logging.getLogger("dream_foundry")

RUN_CANDIDATE = "worker.tasks.run_candidate"
COLLECT = "worker.tasks.collect_results"
DRAIN_TASK = "worker.store.drain_outbox"
QUIET = 60.0  # seconds between repeated "store unreachable" lines of one process
# An embedded run's writer starts this long after its publish: loading SQLAlchemy (about
# 0.3 s of CPU) in this process while the first candidates start would delay them (the
# GIL); they are separate processes once started.
EMBEDDED_DELAY = 1.0

# run id -> store URL, for runs published from this process: an embedded run's
# candidates and callback use the store of the run's own artifacts directory.
_RUN_URLS: dict[str, str] = {}
_STORES: dict[str, Store] = {}
_last_warning: dict[str, float] = {}
_lock = threading.Lock()


def _store(url: str, create: bool = True) -> Store | None:
    store = _STORES.get(url)
    if store is None:
        from worker.store.api import open_store  # start-up: SQLAlchemy, on first write

        store = open_store(url, create=create)
        if store is not None:
            _STORES[url] = store
    return store


def _warn(url: str, message: str, *args: Any) -> None:
    """One line per store and minute for in-flight writes (a down store would otherwise
    log once per candidate)."""
    now = time.monotonic()
    with _lock:
        if now - _last_warning.get(url, -QUIET) < QUIET:
            return
        _last_warning[url] = now
    logger.warning(message, *args)


def _reason(exc: BaseException) -> str:
    return str(exc) if str(exc) else type(exc).__name__


# ------------------------------------------------------------------------ dispatcher


def record_published(run: RunSpec) -> None:
    """The run and its candidates, queued (the dispatcher, before it publishes).

    Distributed, before the first task goes out: other processes mark its candidates.
    Embedded, the marks come from this very process, so the write goes first into the
    queue they follow, and the first candidate does not wait for the database."""
    if not config.store_enabled():
        return
    url = config.database_url(run.artifacts_dir)
    _RUN_URLS[run.run_id] = url

    def write(store: Store) -> None:
        store.import_if_empty(run.artifacts_dir)
        store.write_queued(run)

    if not config.is_distributed():
        _marks.put(url, write, create=True, delay=EMBEDDED_DELAY)
        return
    try:
        write(_store(url))
    except Exception as exc:  # noqa: BLE001 - the run goes on without its in-flight rows
        logger.warning("[%s] run store %s: run not recorded as queued (%s); it is stored "
                       "when it finishes", run.run_id, config.redact_url(url), _reason(exc))


# ------------------------------------------------------------------------ candidates


def _candidate(args: Any) -> tuple[str, str, int] | None:
    data = args[0] if args else None
    if not isinstance(data, dict) or "run_id" not in data or "candidate_id" not in data:
        return None
    return str(data["run_id"]), str(data["candidate_id"]), int(data.get("trial") or 0)


class _MarkWriter:
    """This process's writer of in-flight marks: one thread, in order, off the task's path.

    A mark is a round trip to the store; a task waiting for it holds its worker slot, and
    on a busy machine the database's answer waits for a CPU (milliseconds each). So the
    task hands its mark over and goes on. Order holds within a process (running before
    done); across processes the marks' guards make any order safe, and the chord body's
    finished write supersedes them all. A store that fails is left alone for a few
    seconds (its marks dropped, not queued up behind a connect timeout).
    """

    PAUSE = 5.0

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.down_until: dict[str, float] = {}

    def put(self, url: str, write, create: bool = False, delay: float = 0.0) -> None:
        """Queue ``write(store)``; the thread starts now, or ``delay`` s after this put."""
        self.queue.put((url, write, create))
        if self.thread is None:
            with _lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, daemon=True,
                                                   args=(delay,), name="forge-store-marks")
                    self.thread.start()

    def flush(self, timeout: float) -> bool:
        """Wait until every mark queued so far is written (or dropped)."""
        if self.thread is None:
            return True
        done = threading.Event()
        self.queue.put((None, done.set, False))
        return done.wait(timeout)

    def _run(self, delay: float) -> None:
        time.sleep(delay)
        while True:
            url, write, create = self.queue.get()
            if url is None:
                write()
                continue
            if time.monotonic() < self.down_until.get(url, 0.0):
                continue
            try:
                store = _store(url, create=create)  # marks never create a store
                if store is not None:
                    write(store)
            except Exception as exc:  # noqa: BLE001 - in-flight state is best effort
                self.down_until[url] = time.monotonic() + self.PAUSE
                _warn(url, "run store %s: candidate states not recorded (%s); finished runs "
                      "are kept and retried", config.redact_url(url), _reason(exc))


_marks = _MarkWriter()


def _mark(run_id: str, write) -> None:
    if config.store_enabled():
        _marks.put(_RUN_URLS.get(run_id) or config.database_url(), write,
                   delay=0.0 if config.is_distributed() else EMBEDDED_DELAY)


def flush_marks(timeout: float = 5.0) -> bool:
    """Write this process's queued marks now (tests; a pool process leaving)."""
    return _marks.flush(timeout)


@worker_process_shutdown.connect
def _leaving(**_kw) -> None:
    flush_marks(2.0)


@task_prerun.connect
def _running(sender=None, task=None, args=None, **_kw) -> None:
    if getattr(sender, "name", None) != RUN_CANDIDATE:
        return
    key = _candidate(args)
    if key is not None:
        run_id, cid, trial = key
        worker = getattr(task.request, "hostname", None) if task is not None else None
        _mark(run_id, lambda s: s.mark_running(run_id, cid, worker=worker, trial=trial))


def mark_state(run_id: str, candidate_id: str, state: str, worker: str | None = None,
               trial: int = 0) -> None:
    """A candidate waiting for a sandbox slot, or running again once it has one (the
    lifecycle's ``on_state``); queued behind the other marks, best effort."""
    if state == CapacityState.WAITING:
        _mark(run_id, lambda s: s.mark_waiting(run_id, candidate_id, worker=worker, trial=trial))
    elif state == CapacityState.RUNNING:
        _mark(run_id, lambda s: s.mark_running(run_id, candidate_id, worker=worker, trial=trial))


@task_postrun.connect
def _done(sender=None, args=None, retval=None, **_kw) -> None:
    if getattr(sender, "name", None) != RUN_CANDIDATE or not isinstance(retval, dict):
        return
    key = _candidate(args)
    if key is not None and "candidate_id" in retval:
        run_id, _cid, trial = key
        _mark(run_id, lambda s: s.mark_done(run_id, CandidateResult.from_dict(retval), trial))


# ------------------------------------------------------------------------ chord body


def record_finished(result: ForgeResult, artifacts_dir: str | os.PathLike | None = None
                    ) -> None:
    """The finished run, in one transaction (the chord body, after the run directory in
    ``artifacts_dir``, by default the one the result names).

    On failure the write is owed: parked in the outbox, said in one line, retried."""
    if not config.store_enabled():
        return
    artifacts = os.fspath(artifacts_dir or os.path.dirname(os.path.abspath(
        result.artifacts_dir)))
    url = _RUN_URLS.pop(result.run_id, None) or config.database_url(artifacts)
    try:
        store = _store(url)
        store.write_finished(result)
    except Exception as exc:  # noqa: BLE001 - the run directory holds it: retry later
        observability.report(exc, "store_write", run_id=result.run_id)
        importer.park(artifacts, result.run_id, result.artifacts_dir, _reason(exc))
        logger.warning("[%s] run store %s not written (%s); the run directory has the "
                       "whole run and the write is retried (a worker start, beat, the next "
                       "run, 'forge import')", result.run_id, config.redact_url(url),
                       _reason(exc))
        return
    if importer.pending(artifacts):
        _drain(store, artifacts)


def record_run_dir(run_dir: str | os.PathLike) -> None:
    """A run directory that changed after its run (``forge post`` added a Discord
    record) written again to its store; on failure owed, like the chord body's write."""
    if not config.store_enabled():
        return
    try:
        result = importer.load_run_dir(run_dir)
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("run store: %s not readable as a run directory (%s)", run_dir, exc)
        return
    record_finished(result, os.path.dirname(os.path.abspath(run_dir)))


@task_failure.connect
def _body_failed(sender=None, args=None, exception=None, **_kw) -> None:
    if getattr(sender, "name", None) != COLLECT or not args or len(args) < 2:
        return
    run_data = args[1] if isinstance(args[1], dict) else {}
    run_id = run_data.get("run_id")
    if not run_id or not config.store_enabled():
        return
    url = _RUN_URLS.pop(run_id, None) or config.database_url(run_data.get("artifacts_dir"))
    message = f"the run's callback failed: {type(exception).__name__}: {exception}"
    _mark_failed = (lambda s: s.mark_failed(run_id, message))  # noqa: E731
    try:
        store = _store(url, create=False)
        if store is not None:
            _mark_failed(store)
    except Exception as exc:  # noqa: BLE001
        logger.warning("[%s] run store %s: run not marked failed (%s)", run_id,
                       config.redact_url(url), _reason(exc))


# ------------------------------------------------------------------------ owed writes


def _drain(store: Store, artifacts_dir: str) -> None:
    report = store.drain(artifacts_dir)
    if report.imported:
        logger.info("run store %s: %d owed run(s) written: %s", store.display,
                    len(report.imported), ", ".join(report.imported))
    for path, reason in report.failed:
        logger.warning("run store %s: owed run %s still not written (%s)", store.display,
                       path, reason)


def drain_here(artifacts_dir: str | None = None) -> dict[str, Any]:
    """Drain this machine's outbox (and, for an empty store, import its run directories)."""
    artifacts = artifacts_dir or config.artifacts_dir()
    if not config.store_enabled():
        return {"skipped": "FORGE_STORE=off"}
    url = config.database_url(artifacts)
    owed = importer.pending(artifacts)
    try:
        store = _store(url, create=bool(owed) or bool(importer.run_dirs(artifacts)))
        if store is None:
            return {"imported": [], "failed": []}
        first = store.import_if_empty(artifacts)
        report = store.drain(artifacts)
    except Exception as exc:  # noqa: BLE001 - retried next period
        logger.warning("run store %s unreachable (%s); %d owed run(s) wait",
                       config.redact_url(url), _reason(exc), len(owed))
        return {"error": _reason(exc), "owed": len(owed)}
    imported = (first.imported if first else []) + report.imported
    if imported:
        logger.info("run store %s: %d run(s) written from run directories",
                    config.redact_url(url), len(imported))
    return {"imported": imported, "failed": report.failed}


@shared_task(name=DRAIN_TASK, ignore_result=False)
def drain_outbox() -> dict[str, Any]:
    """Beat's retry of owed store writes on this worker's artifacts directory."""
    return drain_here()


def beat_entries() -> dict[str, dict]:
    """The store's beat entry: retry owed writes every FORGE_STORE_RETRY_INTERVAL s."""
    every = settings.store_retry_interval
    return {"store:drain-outbox": {"task": DRAIN_TASK, "schedule": float(max(every, 10)),
                                   "options": {"expires": max(every, 10)}}}


@worker_init.connect
def _preload(**_kw) -> None:
    """A distributed worker imports the store before it forks its pool processes, which
    then start with it loaded (an embedded run imports it in the background)."""
    if config.is_distributed() and config.store_enabled():
        # start-up: loaded here, before the pool forks, only in a distributed worker
        import worker.store.api  # noqa: F401


@worker_ready.connect
def _at_start(sender=None, **_kw) -> None:
    """A worker starting writes what is owed (or, to an empty store, what exists): in a
    thread, so thousands of run directories never hold up its first task. Embedded runs
    need none of it (their own dispatcher imports, their next run drains)."""
    if config.is_distributed():
        threading.Thread(target=drain_here, name="forge-store-drain", daemon=True).start()


def _after_fork() -> None:
    global _lock, _marks
    _lock = threading.Lock()  # a fork may have caught another thread holding it
    _marks = _MarkWriter()  # the parent's writer thread is not in this process
    _STORES.clear()  # their engines belong to the parent (worker.store.db forgets them)


os.register_at_fork(after_in_child=_after_fork)
