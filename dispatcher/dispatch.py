"""Publishing a run as a chord and waiting for it.

``chord(group(run_candidate × N), collect_results)``: every header task has the
deterministic id ``<run_id>:<candidate_id>``, the body ``<run_id>:collect``. What Flower
shows as a task's arguments is a short ``argsrepr`` (run and candidate ids), never the
script or the environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from celery import chord, group

from dispatcher.plan import RunPlan
from dispatcher.tracker import LogCallback, RunTracker
from worker.app import app
from worker.config import ConfigError, broker_url, env_int, redact_url, result_backend_url
from worker.records import ForgeResult
from worker.tasks import collect_results, run_candidate

# Celery time limits are only a backstop: the sandbox layer enforces deadlines.
BACKSTOP_MARGIN = 120


def body_task_id(run_id: str) -> str:
    return f"{run_id}:collect"


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


def build_chord(plan: RunPlan):
    run = plan.run
    header = group(
        run_candidate.signature(
            (t.to_dict(),),
            task_id=t.task_id,
            argsrepr=f"(run={run.run_id}, candidate={t.candidate_id}, mode={t.execution_mode})",
            time_limit=t.timeout + t.install_timeout + BACKSTOP_MARGIN,
        )
        for t in plan.tasks
    )
    body = collect_results.signature(
        (run.to_dict(),),
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
    from dispatcher import runs

    record = runs.before_publish(app, plan)
    result = build_chord(plan).apply_async()
    runs.after_publish(app, record)
    return result


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
        broker_grace = float(env_int("FORGE_BROKER_GRACE", 60))
    tracker = RunTracker(app, {t.candidate_id: t.task_id for t in plan.tasks}, on_log)
    body = app.AsyncResult(body_task_id(plan.run.run_id))
    interval = poll_interval or (0.1 if len(plan.tasks) <= 200 else 0.5)
    lost_since: float | None = None
    while True:
        try:
            tracker.poll()
            state = body.state
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
        if state == "SUCCESS":
            tracker.poll()
            if on_tick is not None:
                on_tick(tracker)
            return ForgeResult.from_dict(body.result)
        if state in ("FAILURE", "REVOKED"):
            raise RuntimeError(f"the run's callback failed: {body.result!r}")
        time.sleep(interval)
