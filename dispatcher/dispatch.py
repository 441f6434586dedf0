"""Publishing a run as a chord and waiting for it.

``chord(group(run_candidate × N), collect_results)``: every task has a deterministic id
(worker/keys.py). With K repeated trials the header is K x N tasks,
``<run_id>:<candidate_id>:<k>`` (k = 1..K), each its own sandbox lifecycle on whichever
worker slot takes it. What Flower shows as a task's arguments is a short ``argsrepr``
(run and candidate ids), never the script or the environment. The Celery internals
publishing leans on live in worker/celery_compat.py.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

from celery import chord, group

from dispatcher import runs
from dispatcher.plan import RunPlan
from dispatcher.tracker import LogCallback, RunTracker
from worker import celery_compat
from worker.app import RESULT_EXPIRES, app
from worker.bundles import store_bundle
from worker.config import ConfigError, broker_url, redact_url, result_backend_url
from worker.keys import body_task_id, run_spec_key
from worker.records import ForgeResult
from worker.settings import settings
from worker.store.hooks import record_published
from worker.tasks import collect_results, run_candidate, warm_body

logger = logging.getLogger("dream_foundry")

# Celery time limits are only a backstop: the sandbox layer enforces deadlines.
BACKSTOP_MARGIN = 120


# Runs with more candidates pass the chord body a stored RunSpec by reference, and
# publish their header in pipelined batches.
SPEC_INLINE_MAX = 64


BODY_POLL = 0.02  # seconds between reads of the chord body's state at the end of a run


def check_broker(timeout: float = 8.0) -> None:
    """Fail fast, in one clear line, when the broker or result backend is unreachable."""
    url = broker_url()
    if url is None:
        return
    deadline = time.monotonic() + timeout
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3, interval_start=0.2, interval_step=0.5,
                                   interval_max=1.0, timeout=max(1.0, deadline - time.monotonic()))
    except Exception as exc:  # noqa: BLE001 - kombu raises many kinds here
        raise ConfigError(
            f"cannot reach the Celery broker at {redact_url(url)} ({type(exc).__name__}: "
            f"{exc}). Start Redis there or fix CELERY_BROKER_URL."
        ) from None
    backend = result_backend_url()
    client = getattr(app.backend, "client", None)
    if backend and hasattr(client, "ping"):
        try:
            client.ping()
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"cannot reach the result backend at {redact_url(backend)} "
                f"({type(exc).__name__}: {exc}). Start it or fix CELERY_RESULT_BACKEND."
            ) from None


def _body_run_data(run) -> dict:
    """The RunSpec for the chord body, or for a large run a reference to a stored copy.

    Every header task's message carries the body signature, so an inline RunSpec (one
    entry per candidate) would make publishing O(N^2): 5,000 candidates, 3.6 GB. Large
    runs store it once in the result backend (same TTL as results) instead.
    """
    data = run.to_dict()
    if len(run.candidates) <= SPEC_INLINE_MAX:
        return data
    key = run_spec_key(run.run_id)
    app.backend.set(key, json.dumps(data, ensure_ascii=False))
    return {"run_id": run.run_id, "spec_key": key}


def store_bundles(plan: RunPlan) -> int:
    """Store each directory candidate's bundle once in the result backend (by sha256, the
    results' TTL), before any task that names it is published. Returns how many were
    written (an unchanged project shipped by an earlier run may still be there)."""
    return sum(store_bundle(app.backend, sha, data, RESULT_EXPIRES)
               for sha, data in plan.bundles.items())


def build_chord(plan: RunPlan):
    run = plan.run
    header = group(
        run_candidate.signature(
            (t.to_dict(),),
            task_id=t.task_id,
            argsrepr=(f"(run={run.run_id}, candidate={t.candidate_id}, "
                      + (f"trial={t.trial + 1}/{t.trials}, " if t.trials > 1 else "")
                      + f"mode={t.execution_mode})"),
            time_limit=(t.timeout + t.install_timeout + BACKSTOP_MARGIN
                        + (t.budget.slot_wait if t.execution_mode == "daytona" else 0)),
        )
        for t in plan.tasks
    )
    body = collect_results.signature(
        (_body_run_data(run),),
        task_id=body_task_id(run.run_id),
        argsrepr=f"(run={run.run_id}, candidates={len(plan.tasks)})",
        kwargsrepr="{}",
    )
    return chord(header, body)


def publish(plan: RunPlan):
    """Send the chord; returns the body's AsyncResult.

    The run record goes to the result backend first, so a dispatcher killed mid-publish
    leaves a run that `forge status` reports as cut short and `forge resume` can finish.
    """
    record_published(plan.run)  # the run store: run and candidates queued (best effort)
    store_bundles(plan)
    record = runs.before_publish(app, plan)
    # We never join a task (wait() polls the backend): without never_joined the Redis
    # backend SUBSCRIBEs to every task's result channel, one round trip per task, and
    # Redis then buffers every PROGRESS update for a client that never reads them.
    batched = (celery_compat.batched_producer(app) if len(plan.tasks) > SPEC_INLINE_MAX
               else nullcontext())
    with celery_compat.never_joined(app), batched:
        result = build_chord(plan).apply_async()
    runs.after_publish(app, record)
    return result


def _body_state(body) -> tuple[str, object]:
    """The chord body's state and result, read once: in distributed mode without the
    backend's retry loop, so an outage reaches wait()'s broker_grace instead of hanging."""
    if broker_url() is None:
        return body.state, body.result
    meta = celery_compat.read_meta_once(app.backend, body.id)
    if meta is None:
        return "PENDING", None
    return meta.get("status", "PENDING"), meta.get("result")


def wait(
    plan: RunPlan,
    *,
    on_log: LogCallback | None = None,
    on_tick: Callable[[RunTracker], None] | None = None,
    poll_interval: float | None = None,
    broker_grace: float | None = None,
) -> ForgeResult:
    """Follow the run until the chord body finished; return its ForgeResult.

    A broker/backend outage longer than ``broker_grace`` seconds (default
    FORGE_BROKER_GRACE, 60) ends the wait with a ConfigError instead of hanging.
    """
    if broker_grace is None:
        broker_grace = float(settings.broker_grace)
    tracker = RunTracker(app, {t.unit: t.task_id for t in plan.tasks}, on_log)
    body = app.AsyncResult(body_task_id(plan.run.run_id))
    with _task_ends(body.id) as ended:
        return _follow(plan, tracker, body, ended, on_tick, poll_interval, broker_grace)


@contextmanager
def _task_ends(body_id: str) -> Iterator[threading.Event]:
    """An event set when there is news to read, so the wait reads it at once rather than
    at its next poll: embedded, whenever a task of this process's worker has finished
    (its result stored); distributed on Redis, when the chord body's result is stored
    (the backend publishes every result on its key's channel). Polling stays the
    fallback: a subscription that fails changes nothing but the delay."""
    ended = threading.Event()
    if broker_url() is not None:
        with _body_published(body_id, ended):
            yield ended
        return
    from celery.signals import task_postrun  # start-up: celery.signals only when embedded

    def on_end(**_kwargs) -> None:
        ended.set()

    task_postrun.connect(on_end, weak=False)
    try:
        yield ended
    finally:
        task_postrun.disconnect(on_end)


@contextmanager
def _body_published(body_id: str, ended: threading.Event) -> Iterator[None]:
    """Set ``ended`` when the Redis result backend publishes the chord body's result."""
    backend = app.backend
    client = celery_compat.redis_client(backend)
    worker = None
    if client is not None:
        try:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(**{celery_compat.task_meta_key(backend, body_id):
                                lambda _m: ended.set()})
            worker = pubsub.run_in_thread(  # a lost connection ends it quietly
                sleep_time=0.5, daemon=True, exception_handler=lambda _e, _p, t: t.stop())
        except Exception as exc:  # noqa: BLE001 - the wait polls instead
            logger.debug("not subscribed to the chord body's result: %s", exc)
    try:
        yield
    finally:
        if worker is not None:
            _stop_listening(worker)


def _stop_listening(worker: threading.Thread) -> None:
    """Tell the listener to end (within its sleep_time; it then closes its connection)
    without waiting for it: redis-py 8's ``stop()`` joins the thread unless told
    ``timeout=0``, which would add up to sleep_time to every wait; earlier ones never
    waited, and take no timeout."""
    if "timeout" in inspect.signature(worker.stop).parameters:
        worker.stop(timeout=0)
    else:
        worker.stop()


def _follow(plan: RunPlan, tracker: RunTracker, body, ended: threading.Event,
            on_tick: Callable[[RunTracker], None] | None, poll_interval: float | None,
            broker_grace: float) -> ForgeResult:
    interval = poll_interval or 0.1
    lost_since: float | None = None
    distributed = broker_url() is not None
    warming = distributed  # distributed: the body runs elsewhere
    # Distributed, with nobody to show progress to (the Python API without callbacks),
    # the candidates' states need not be read at all: only the body's (one key).
    watched = not distributed or tracker.on_log is not None or on_tick is not None
    while True:
        ended.clear()  # before reading: an end after this read wakes the wait below
        try:
            t_poll = time.monotonic()
            if watched:
                tracker.poll()
            if not poll_interval:  # adaptive: polling takes at most ~1/25 of the time
                interval = min(2.0, max(0.1, 25 * (time.monotonic() - t_poll)))
            state, outcome = _body_state(body)
            lost_since = None
        except Exception as exc:  # noqa: BLE001 - broker/backend connection trouble
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > broker_grace:
                raise ConfigError(
                    f"lost the result backend for over {broker_grace:.0f}s "
                    f"({type(exc).__name__}: {exc}); the run {plan.run.run_id} may still "
                    "complete on the workers: check it later with 'forge status'."
                ) from None
            time.sleep(1.0)
            continue
        if on_tick is not None:
            on_tick(tracker)
        if not warming and tracker.all_started:
            warming = True  # the candidates are processes of their own now
            threading.Thread(target=warm_body, args=(plan.run.judge,), daemon=True,
                             name="forge-warm-body").start()
        if state == "SUCCESS":
            if watched:
                tracker.poll()
            if on_tick is not None:
                on_tick(tracker)
            return ForgeResult.from_dict(outcome)
        if state in ("FAILURE", "REVOKED"):
            raise RuntimeError(f"the run's callback failed: {outcome!r}")
        # Once every candidate is in, only the body's key is read: poll it closely.
        ended.wait(BODY_POLL if watched and tracker.finished else interval)
