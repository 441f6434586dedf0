"""A run page, live: each candidate's state, elapsed time and newest log lines, pushed
to every open page as server-sent events.

Sources, merged per candidate: the run store's in-flight states (queued, waiting,
running, done; written by the workers) and, in distributed mode, the Celery task meta
each candidate task keeps in the result backend (``PROGRESS`` with its newest log lines,
then ``SUCCESS`` with its result), read for all of a run's unfinished candidates in one
``mget``. The two arrive in any order, so a candidate's state is the furthest either
shows.

One watcher per watched run, however many pages have it open: it reads, compares with
what it last sent, and renders only the candidates that changed, once, for every page.
In distributed mode it sleeps on the result backend's own pub/sub channels (the Redis
backend publishes every task state it stores) so a change shows within milliseconds;
otherwise, and as a fallback, it reads every ``poll_interval`` seconds. It stops when
the last page closes, or once the run is finished, after telling the pages where the
finished body is (each fetches its own: it holds the session's form tokens).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool

from dispatcher.web.data import Data
from worker.records import task_id_for

logger = logging.getLogger("dream_foundry.web")

LOG_LINES = 6  # newest log lines shown per candidate
COALESCE = 0.03  # seconds: a burst of task events is read once
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (proxies close idle ones)
QUEUE_MAX = 200  # events waiting for one slow page before it is dropped (it reconnects)
TERMINAL = ("finished", "failed")


@dataclass(frozen=True)
class LiveCandidate:
    """One candidate of a live run, as its row shows it."""

    candidate_id: str
    name: str
    position: int
    state: str  # queued | waiting | running | done
    success: bool | None = None
    started_at: datetime | None = None
    runtime_seconds: float | None = None
    worker: str | None = None
    attempt: int | None = None
    error: str | None = None
    log: tuple[str, ...] = ()
    run_id: str = ""

    @property
    def task_id(self) -> str:
        return task_id_for(self.run_id, self.candidate_id)


@dataclass(frozen=True)
class Snapshot:
    summary: Any  # worker.store.RunSummary
    candidates: list[LiveCandidate]

    @property
    def terminal(self) -> bool:
        return self.summary.status in TERMINAL


_RANK = {"queued": 0, "waiting": 1, "running": 2, "done": 3}


def _time(text: Any) -> datetime | None:
    try:
        value = datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _lines(info: dict) -> tuple[str, ...]:
    log = info.get("log")
    if not isinstance(log, list):
        return ()
    return tuple(str(x) for x in log[-LOG_LINES:])


def merge(state, meta: dict[str, Any] | None, run_id: str,
          first_seen: datetime | None = None) -> LiveCandidate:
    """A store state (``worker.store.CandidateState``) and the task's meta, merged."""
    c = LiveCandidate(candidate_id=state.candidate_id, name=state.name,
                      position=state.position, state=state.state, success=state.success,
                      started_at=state.started_at, runtime_seconds=state.runtime_seconds,
                      worker=state.worker, attempt=state.attempt, error=state.error_message,
                      run_id=run_id)
    if not meta:
        return c
    status, info = meta.get("status"), meta.get("result")
    if status == "PROGRESS" and isinstance(info, dict):
        c = replace(c, log=_lines(info), worker=info.get("worker") or c.worker,
                    attempt=info.get("attempt") or c.attempt)
        started = info.get("started")
        if isinstance(started, int | float) and not isinstance(started, bool):
            first_seen = datetime.fromtimestamp(started, UTC)  # when the task began
        if _RANK[c.state] < _RANK["running"]:
            c = replace(c, state="running")
    elif status == "SUCCESS" and isinstance(info, dict):
        c = replace(c, state="done", success=bool(info.get("success")), log=_lines(info),
                    runtime_seconds=info.get("runtime_seconds"),
                    error=info.get("error_message"),
                    started_at=c.started_at or _time(info.get("started_at")),
                    worker=info.get("worker") or c.worker,
                    attempt=info.get("attempt") or c.attempt)
    elif status in ("FAILURE", "REVOKED"):
        c = replace(c, state="done", success=False,
                    error=c.error or f"the task ended in state {status}")
    if c.state == "running" and first_seen is not None and (
            c.started_at is None or first_seen < c.started_at):
        c = replace(c, started_at=first_seen)  # the store's mark is written a little later
    return c


class LiveHub:
    """Every live run's watcher, and the snapshots the run page starts from."""

    def __init__(self, data: Data, render: Renderers, poll_interval: float,
                 backend=None, redis_url: str | None = None):
        self.data = data
        self.render = render
        self.poll = poll_interval
        self.backend = backend  # Celery's result backend (distributed), else None
        self.redis_url = redis_url  # its Redis, for pub/sub wake-ups
        self._watches: dict[str, _Watch] = {}
        # (run, candidate) -> when this process first saw it running (the store's start
        # mark may come later), and a finished candidate's last log lines.
        self._first_seen: dict[tuple[str, str], datetime] = {}
        self._done_log: dict[tuple[str, str], tuple[str, ...]] = {}

    # ------------------------------------------------------------------ reading

    def snapshot(self, run_id: str) -> Snapshot | None:
        """The run's state now (None: no such run). Blocking: call from a thread.

        A finished candidate's task meta (its whole result) is read once per process, for
        its last log lines; an unfinished one's (a few lines) on every read."""
        summary = self.data.read("run_summary", run_id)
        if summary is None:
            return None
        states = self.data.read("run_states", run_id) or []
        metas: dict[str, dict] = {}
        wanted = set()
        if self.backend is not None and summary.status not in TERMINAL:
            wanted = {s.candidate_id for s in states
                      if s.state != "done" or (run_id, s.candidate_id) not in self._done_log}
            try:
                from worker.states import task_metas

                # A run of repeated trials shows each candidate by its first trial (the
                # store's trial 0): its task is <run>:<candidate>:1.
                metas = task_metas(self.backend, [t for c in wanted for t in (
                    task_id_for(run_id, c), task_id_for(run_id, c, 0, 2))])
            except Exception as exc:  # noqa: BLE001 - the store's view still stands
                logger.warning("dashboard: task states of %s not read (%s)", run_id,
                               type(exc).__name__)
                wanted = set()
        now = datetime.now(UTC)
        out = []
        for s in states:
            key = (run_id, s.candidate_id)
            meta = (metas.get(task_id_for(run_id, s.candidate_id))
                    or metas.get(task_id_for(run_id, s.candidate_id, 0, 2)))
            if meta and meta.get("status") == "PROGRESS":
                self._first_seen.setdefault(key, now)
            c = merge(s, meta, run_id, self._first_seen.get(key))
            if c.state == "done":
                if c.log or s.candidate_id in wanted:
                    self._done_log[key] = c.log
                elif key in self._done_log:
                    c = replace(c, log=self._done_log[key])
            out.append(c)
        if summary.status in TERMINAL:
            for s in states:
                self._first_seen.pop((run_id, s.candidate_id), None)
                self._done_log.pop((run_id, s.candidate_id), None)
        return Snapshot(summary, out)

    # ------------------------------------------------------------------ streaming

    async def stream(self, run_id: str) -> AsyncIterator[str]:
        """The run's events, as ``text/event-stream``: first the whole current state,
        then each change, then ``final`` (where the finished page's body is) and the
        end."""
        watch = self._watches.get(run_id)
        if watch is None or watch.done:
            watch = self._watches[run_id] = _Watch(self, run_id)
        queue: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        initial = watch.current()
        watch.queues.add(queue)
        watch.start()
        try:
            yield "retry: 2000\n\n"
            for event in initial:
                yield _sse(*event)
            while True:
                try:
                    events = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if events is None:  # dropped (too slow) or the watcher stopped
                    return
                for event in events:
                    yield _sse(*event)
                if any(name == "final" for name, _ in events):
                    return
        finally:
            watch.queues.discard(queue)

    async def close(self) -> None:
        for watch in list(self._watches.values()):
            await watch.stop()


@dataclass(frozen=True)
class Renderers:
    """How the watcher turns state into HTML (the app's templates)."""

    head: Callable[[Any], str]  # RunSummary -> the run's header
    row: Callable[[LiveCandidate], str]  # -> the candidate's table row


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Watch:
    """One run's watcher (see the module docstring)."""

    def __init__(self, hub: LiveHub, run_id: str):
        self.hub = hub
        self.run_id = run_id
        self.queues: set[asyncio.Queue] = set()
        self.head: tuple[Any, str] | None = None
        self.rows: dict[str, tuple[LiveCandidate, str]] = {}
        self.final: str | None = None  # the finished body's URL, once finished
        self.task: asyncio.Task | None = None
        self.done = False
        self._client = None  # the Redis client of the pub/sub

    def current(self) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        if self.head is not None:
            events.append(("head", {"html": self.head[1]}))
        events += [("cand", {"id": cid, "html": html}) for cid, (_, html) in self.rows.items()]
        if self.final is not None:
            events.append(("final", {"url": self.final}))
        return events

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    def _step(self) -> list[tuple[str, Any]]:
        """Read, compare, render what changed (a thread: the store is blocking)."""
        hub = self.hub
        snap = hub.snapshot(self.run_id)
        if snap is None:
            return [("gone", {})]
        events: list[tuple[str, Any]] = []
        key = (snap.summary.status, snap.summary.states, snap.summary.winner_id)
        if self.head is None or self.head[0] != key:
            self.head = (key, hub.render.head(snap.summary))
            events.append(("head", {"html": self.head[1]}))
        for c in snap.candidates:
            old = self.rows.get(c.candidate_id)
            if old is None or old[0] != c:
                html = hub.render.row(c)
                self.rows[c.candidate_id] = (c, html)
                events.append(("cand", {"id": c.candidate_id, "html": html}))
        if snap.terminal:  # each page fetches its own finished body (its form tokens)
            self.final = f"/runs/{self.run_id}/body"
            events.append(("final", {"url": self.final}))
        return events

    async def _run(self) -> None:
        pubsub = await self._subscribe()
        try:
            while self.queues:
                t0 = time.monotonic()
                try:
                    events = await run_in_threadpool(self._step)
                except Exception:  # noqa: BLE001 - logged; the pages keep what they have
                    logger.exception("dashboard: live view of run %s failed", self.run_id)
                    events = []
                if events:
                    self._broadcast(events)
                if self.final is not None or any(e[0] == "gone" for e in events):
                    break
                pubsub = await self._wait(pubsub, max(0.0, self.hub.poll
                                                      - (time.monotonic() - t0)))
        finally:
            self.done = True
            if self.hub._watches.get(self.run_id) is self:
                del self.hub._watches[self.run_id]
            for q in list(self.queues):
                _put(q, None)
            await self._unsubscribe(pubsub)

    def _broadcast(self, events: list[tuple[str, Any]]) -> None:
        for q in list(self.queues):
            if not _put(q, events):
                self.queues.discard(q)
                _put(q, None, force=True)

    async def _subscribe(self):
        """Pub/sub on the run's task-state channels, or None (no broker, or it failed:
        then the watcher polls)."""
        if self.hub.redis_url is None or self.hub.backend is None:
            return None
        try:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(self.hub.redis_url, socket_connect_timeout=3)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            key = self.hub.backend.get_key_for_task(f"{self.run_id}:x")
            key = key.decode() if isinstance(key, bytes) else key
            self._client = client
            await pubsub.psubscribe(key[:-1] + "*")  # celery-task-meta-<run>:*
            return pubsub
        except Exception as exc:  # noqa: BLE001
            logger.warning("dashboard: no task events for run %s (%s); polling instead",
                           self.run_id, type(exc).__name__)
            return None

    async def _wait(self, pubsub, timeout: float):
        """Until a task event of the run (then a short pause, so a burst is read once) or
        ``timeout``. Returns the pubsub to keep using (None once it failed)."""
        if pubsub is None:
            await asyncio.sleep(timeout)
            return None
        try:
            message = await pubsub.get_message(timeout=timeout)
            if message is not None:
                await asyncio.sleep(COALESCE)
                while await pubsub.get_message(timeout=0) is not None:
                    pass
            return pubsub
        except Exception as exc:  # noqa: BLE001 - Redis went away: poll from now on
            logger.warning("dashboard: task events of run %s lost (%s); polling instead",
                           self.run_id, type(exc).__name__)
            await self._unsubscribe(pubsub)
            await asyncio.sleep(timeout)
            return None

    async def _unsubscribe(self, pubsub) -> None:
        for closing in (pubsub, self._client):
            if closing is not None:
                try:
                    await closing.aclose()
                except Exception:  # noqa: BLE001 - closing a connection already gone
                    pass
        self._client = None


def _put(queue: asyncio.Queue, item, force: bool = False) -> bool:
    try:
        queue.put_nowait(item)
        return True
    except asyncio.QueueFull:
        if force:
            try:
                queue.get_nowait()
                queue.put_nowait(item)
            except (asyncio.QueueEmpty, asyncio.QueueFull):
                pass
        return False
