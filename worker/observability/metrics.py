"""Prometheus metrics of competitions (names, labels and meaning: docs/observability.md).

**Export.** With ``FORGE_METRICS_PORT`` set, a worker's main process serves ``/metrics``
on it; without it nothing is defined or measured (this code never imports
``prometheus_client`` then; Celery's command line may, through Flower's plugin).

**Prefork.** Candidates run in pool processes, a scrape reaches the main process: so
this uses prometheus_client's multiprocess mode. Each process writes its values to
memory-mapped files in one directory per worker (``FORGE_METRICS_DIR``, else a fresh
temporary directory; wiped when the worker starts), and the main process adds them up
at scrape time. Counters and histograms of a pool process that exited (recycled,
killed) stay in the sum; its share of the live gauge (sandboxes alive) is dropped when it
exits (``worker_process_shutdown``) and, for one that was SIGKILLed and could not say
so, at the next scrape (its PID is gone). The alternative, an exporter reading Redis and
the store, would see neither phases nor sandboxes.

**Cluster-wide figures** are read at scrape time rather than counted: queue depth from
the broker, the last successful run of each competition from Redis (it survives worker
restarts). Every worker reports the same value for these: aggregate them with ``max``.
Runs started and finished are counted once per run across the cluster (a ``SET NX``
in the result backend), by the worker that saw the event first.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from types import SimpleNamespace
from typing import Any

from worker import celery_compat, config, keys
from worker.observability import context
from worker.sandbox.base import CapacityState

logger = logging.getLogger("dream_foundry")

# Seconds: a trivial local candidate's phases take milliseconds, a Daytona create or a
# long script minutes.
PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                 300, 600, 1800, 3600)
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# CandidateResult.timings entries that are not phase durations.
NOT_PHASES = frozenset({"entered_at", "refused", "slot_wait"})

# Redis keys (result backend): one run counted once across the cluster.
LAST_SUCCESS_KEY = keys.METRICS_LAST_SUCCESS_KEY
run_started_key = keys.metrics_run_started_key
run_finished_key = keys.metrics_run_finished_key


_m: SimpleNamespace | None = None  # the metric objects, once enabled in this worker
_dir: str | None = None
_own_dir = False  # a temporary directory we made (removed at shutdown)
_seen_runs: collections.OrderedDict[str, None] = collections.OrderedDict()
_seen_lock = threading.Lock()
SEEN_MAX = 4096  # runs this process already counted as started (no round trip again)

# Did the running candidate wait for a slot? Set in the task's own thread (the budget
# calls back there), read at its postrun, where its wait's length is known.
_waited: contextvars.ContextVar[bool] = contextvars.ContextVar("forge_waited", default=False)


def enabled() -> bool:
    return _m is not None


# -- set-up (the worker's main process, before its pool forks) --------------------------


def init_worker() -> bool:
    """``celeryd_init``: choose the directory, switch prometheus_client to multiprocess
    mode, define the metrics (inherited by every pool process). False when disabled."""
    global _m, _dir, _own_dir
    if _m is not None:
        return True
    if config.metrics_port() is None:
        return False
    directory = config.metrics_dir()
    if directory:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):  # a previous run's values are not ours
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
    else:
        directory = tempfile.mkdtemp(prefix=f"forge-metrics-{os.getpid()}-")
        _own_dir = True
    # prometheus_client's own switch to multiprocess mode, inherited by the pool (the
    # setting users set is FORGE_METRICS_DIR).
    os.environ.update(PROMETHEUS_MULTIPROC_DIR=directory)
    # start-up: prometheus_client, only when FORGE_METRICS_PORT is set
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # in case it was imported before
    _dir = directory
    _m = _define()
    for backend in ("local", "daytona"):  # 0, not absent, while none is alive: the main
        _m.sandboxes.labels(backend)  # process (never recycled) holds the zero samples
    return True


def _define() -> SimpleNamespace:
    # start-up: prometheus_client, only when FORGE_METRICS_PORT is set
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        runs_started=Counter(
            "forge_runs_started", "Runs whose first candidate started",
            ["execution_mode", "competition"]),
        runs_finished=Counter(
            "forge_runs_finished", "Runs whose chord body ended, by outcome "
            "(winner, no_winner, failed)", ["execution_mode", "competition", "outcome"]),
        candidates=Counter(
            "forge_candidates_finished", "Candidates finished, by outcome "
            "(succeeded, failed, timed_out)", ["execution_mode", "outcome"]),
        phase=Histogram(
            "forge_candidate_phase_seconds", "Seconds a candidate spent in each phase "
            "of its lifecycle", ["execution_mode", "phase"], buckets=PHASE_BUCKETS),
        sandboxes=Gauge(
            "forge_sandboxes_alive", "Sandboxes created and not yet deleted",
            ["backend"], multiprocess_mode="livesum"),
        slot_waits=Counter(
            "forge_sandbox_slot_waits", "Candidates that had to wait for a sandbox slot "
            "(counted when the wait begins)", ["backend"]),
        slot_wait=Histogram(
            "forge_sandbox_slot_wait_seconds", "Seconds a candidate that had to wait spent "
            "waiting for capacity (budget slot, quota refusals, image build)", ["backend"],
            buckets=WAIT_BUCKETS),
        refusals=Counter(
            "forge_sandbox_create_refusals", "Creates the sandbox service refused (quota, "
            "rate limit) and that were retried", ["backend"]),
        discord=Counter(
            "forge_discord_posts", "Winner posts to Discord, by outcome (posted, failed, "
            "skipped)", ["outcome"]),
        firings=Counter(
            "forge_schedule_firings", "Scheduled competition firings, by status "
            "(dispatched, skipped)", ["competition", "status"]),
    )


def serve(app: Any) -> None:
    """``worker_ready`` (main process, after the pool forked): serve /metrics."""
    if _m is None or _dir is None:
        return
    # start-up: prometheus_client, only when FORGE_METRICS_PORT is set
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(app, _dir))
    port, addr = config.metrics_port(), config.metrics_addr()
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        logger.warning("metrics not served on %s:%s (%s); is another worker on this port? "
                       "set FORGE_METRICS_PORT per worker", addr, port, exc)
        return
    logger.info("metrics served on http://%s:%s/metrics", addr, port)


def process_exit() -> None:
    """``worker_process_shutdown``: this pool process's live gauges leave the sum."""
    if _m is not None and _dir is not None:
        # start-up: prometheus_client, only when FORGE_METRICS_PORT is set
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), _dir)


def shutdown() -> None:
    """``worker_shutdown`` (main): remove the temporary directory we made."""
    if _own_dir and _dir is not None:
        shutil.rmtree(_dir, ignore_errors=True)


# -- what tasks report (Celery signals, in the process running the task) ----------------


def _redis(task: Any):
    return celery_compat.redis_client(getattr(task, "backend", None))


def _first(task: Any, key: str) -> bool:
    """True for the first caller across the cluster (Redis SET NX; no Redis: True)."""
    client = _redis(task)
    if client is None:
        return True
    expires = task.app.conf.result_expires  # worker/app.py: FORGE_RESULT_EXPIRES
    ttl = int(getattr(expires, "total_seconds", lambda: expires)() or 86400)
    try:
        return bool(client.set(key, "1", nx=True, ex=ttl))
    except Exception as exc:  # noqa: BLE001 - a metric must never fail a task
        logger.debug("metrics: %s not claimed: %s", key, exc)
        return False


def task_started(task: Any, ctx: context.TaskContext) -> None:
    if _m is None or ctx.task_name != context.RUN_CANDIDATE or not ctx.run_id:
        return
    _waited.set(False)
    with _seen_lock:
        if ctx.run_id in _seen_runs:
            return
        _seen_runs[ctx.run_id] = None
        while len(_seen_runs) > SEEN_MAX:
            _seen_runs.popitem(last=False)
    if _first(task, run_started_key(ctx.run_id)):
        _m.runs_started.labels(ctx.execution_mode or "", ctx.competition or "").inc()


def task_finished(task: Any, ctx: context.TaskContext, retval: Any) -> None:
    if _m is None or not isinstance(retval, dict):
        return
    try:
        if ctx.task_name == context.RUN_CANDIDATE:
            _candidate(retval, ctx)
        elif ctx.task_name == context.COLLECT:
            _run(task, retval, ctx)
        elif ctx.task_name == context.START_COMPETITION and retval.get("status"):
            _m.firings.labels(str(retval.get("competition") or ctx.competition or ""),
                              str(retval["status"])).inc()
    except Exception as exc:  # noqa: BLE001 - a metric must never fail a task
        logger.debug("metrics: %s not recorded: %s", ctx.task_name, exc)


def task_failed(task: Any, ctx: context.TaskContext) -> None:
    if _m is None or ctx.task_name != context.COLLECT or not ctx.run_id:
        return
    if _first(task, run_finished_key(ctx.run_id)):
        _m.runs_finished.labels(ctx.execution_mode or "", ctx.competition or "",
                                "failed").inc()


def _candidate(result: dict, ctx: context.TaskContext) -> None:
    mode = str(result.get("execution_mode") or ctx.execution_mode or "")
    outcome = ("succeeded" if result.get("success") else
               "timed_out" if result.get("timed_out") else "failed")
    _m.candidates.labels(mode, outcome).inc()
    timings = result.get("timings") or {}
    for phase, seconds in timings.items():
        if phase not in NOT_PHASES and isinstance(seconds, int | float) and seconds >= 0:
            _m.phase.labels(mode, phase).observe(seconds)
    waited = timings.get("slot_wait")
    if _waited.get() and isinstance(waited, int | float):
        _m.slot_wait.labels(mode).observe(waited)
    _waited.set(False)
    refused = timings.get("refused")
    if isinstance(refused, int | float) and refused > 0:
        _m.refusals.labels(mode).inc(refused)


def _run(task: Any, forge: dict, ctx: context.TaskContext) -> None:
    run_id = str(forge.get("run_id") or ctx.run_id or "")
    mode = str(forge.get("execution_mode") or ctx.execution_mode or "")
    competition = str(forge.get("competition") or ctx.competition or "")
    post = forge.get("discord")
    if isinstance(post, dict):
        outcome = ("posted" if post.get("posted") else "failed" if post.get("error")
                   else "skipped")
        if post.get("skipped") != "already posted":  # a redelivered body's non-post
            _m.discord.labels(outcome).inc()
    if run_id and _first(task, run_finished_key(run_id)):
        won = bool(forge.get("winner_id"))
        _m.runs_finished.labels(mode, competition, "winner" if won else "no_winner").inc()
        client = _redis(task)
        if won and competition and client is not None:
            try:
                client.hset(LAST_SUCCESS_KEY, competition, f"{time.time():.3f}")
            except Exception as exc:  # noqa: BLE001
                logger.debug("metrics: last success of %s not stored: %s", competition, exc)


def sandbox_alive(backend: str, delta: int) -> None:
    """The lifecycle: a sandbox was created (+1) or deleted (-1)."""
    if _m is not None:
        _m.sandboxes.labels(backend).inc(delta)


def candidate_state(backend: str, state: str) -> None:
    """The lifecycle: the candidate waits for capacity (counted now), or runs."""
    if _m is not None and state == CapacityState.WAITING and not _waited.get():
        _waited.set(True)
        _m.slot_waits.labels(backend).inc()


# -- scrape time (the main process's HTTP thread) ---------------------------------------

_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Collector:
    """The pool processes' files, plus what is read from the broker and Redis."""

    def __init__(self, app: Any, path: str):
        self.app = app
        self.path = path

    def collect(self):
        # start-up: prometheus_client, only when FORGE_METRICS_PORT is set
        from prometheus_client import multiprocess

        for name in os.listdir(self.path):  # SIGKILLed pool processes said nothing
            m = _LIVE_FILE.match(name)
            if m and not _alive(int(m.group(1))):
                multiprocess.mark_process_dead(int(m.group(1)), self.path)
        yield from multiprocess.MultiProcessCollector(None, self.path).collect()
        yield from self._broker()
        yield from self._last_success()

    def _broker(self):
        # start-up: prometheus_client, only when FORGE_METRICS_PORT is set
        from kombu.exceptions import ChannelError
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily("forge_queue_depth", "Task messages waiting in the "
                                  "broker queue (not yet taken by a worker)", labels=["queue"])
        up = GaugeMetricFamily("forge_broker_up", "1 if the broker answered this scrape")
        queues = sorted({self.app.conf.task_default_queue, *self.app.amqp.queues})
        try:
            with self.app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
                channel = conn.default_channel
                for queue in queues:
                    try:
                        count = channel.queue_declare(queue=queue, passive=True).message_count
                    except ChannelError:  # no such queue (Redis drops an empty list)
                        count = 0
                    depth.add_metric([queue], count)
            up.add_metric([], 1)
            yield depth
        except Exception as exc:  # noqa: BLE001 - the rest of the scrape still counts
            logger.debug("metrics: broker not read: %s", exc)
            up.add_metric([], 0)
        yield up

    def _last_success(self):
        # start-up: prometheus_client, only when FORGE_METRICS_PORT is set
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "forge_competition_last_success_timestamp_seconds", "Unix time the last run of "
            "a scheduled competition finished with a winner", labels=["competition"])
        try:
            client = celery_compat.redis_client(self.app.backend)
            if client is not None:
                for name, when in client.hgetall(LAST_SUCCESS_KEY).items():
                    family.add_metric([name.decode()], float(when))
        except Exception as exc:  # noqa: BLE001
            logger.debug("metrics: last successes not read: %s", exc)
        yield family
