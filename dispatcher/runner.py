"""Preparing and executing a run, in embedded or distributed mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dispatcher import dispatch
from dispatcher.manifest import Manifest, load_manifest
from dispatcher.plan import RunPlan, plan_run
from dispatcher.request import RunRequest
from dispatcher.tracker import LogCallback, RunTracker
from worker import config, trace
from worker.records import DEFAULT_OBJECTIVE, ForgeResult

FALLBACK_NOTE = "(Daytona not configured, falling back to local)"
MAX_EMBEDDED_CONCURRENCY = 32


def prepare(objective: str = DEFAULT_OBJECTIVE, use_daytona: bool = False, *,
            manifest: Manifest | None = None, **options: Any) -> RunPlan:
    """``plan_request`` of ``RunRequest(objective, daytona=use_daytona, **options)``: the
    keyword form of the Python API and the benchmarks."""
    return plan_request(RunRequest(objective=objective, daytona=use_daytona, **options),
                        manifest)


def plan_request(request: RunRequest, manifest: Manifest | None = None) -> RunPlan:
    """Load and validate everything a run needs; raises InvalidInput (worker/validation.py:
    the objective, run id, timeout, artifacts directory), ManifestError or ConfigError.

    ``manifest``: candidates already loaded (the seed-compatible API), instead of
    ``request.candidates``."""
    request.validate()
    manifest = manifest or load_manifest(request.candidates)
    notes = []
    mode = "local"
    if request.daytona:
        if config.is_daytona_configured():
            mode = "daytona"
        else:
            notes.append(FALLBACK_NOTE)
    return plan_run(request, manifest, execution_mode=mode, notes=notes)


def execute(
    plan: RunPlan,
    log_callback: LogCallback | None = None,
    on_tick: Callable[[RunTracker], None] | None = None,
    on_published: Callable[[RunPlan], None] | None = None,
) -> ForgeResult:
    """Publish the chord and wait for it: in-process worker when no broker is set."""
    if config.is_distributed():
        dispatch.check_broker()
        dispatch.publish(plan)
        if on_published:
            on_published(plan)
        return dispatch.wait(plan, on_log=log_callback, on_tick=on_tick)
    from dispatcher.embedded import embedded_worker
    from worker.app import app

    trace.mark("worker.starting")
    width = max(1, min(len(plan.tasks), MAX_EMBEDDED_CONCURRENCY))
    with embedded_worker(app, width, any(t.execution_mode == "local" for t in plan.tasks)):
        trace.mark("worker.ready")
        dispatch.publish(plan)
        trace.mark("published")
        if on_published:
            on_published(plan)
        result = dispatch.wait(plan, on_log=log_callback, on_tick=on_tick)
        trace.mark("result")
    trace.mark("worker.stopped")
    return result


def run_forge(
    objective: str = DEFAULT_OBJECTIVE,
    use_daytona: bool = False,
    log_callback: LogCallback | None = None,
    **options,
) -> ForgeResult:
    """Run a whole competition and return its result (the Python API).

    ``log_callback(candidate_id, message)`` receives each candidate's lifecycle lines
    as they happen. ``options`` are the fields of :class:`RunRequest` (``candidates``,
    ``artifacts_dir``, ``run_id``, ``timeout``, ``network``, ``post``, ...) and
    ``manifest`` (candidates already loaded). Bad input raises ``InvalidInput`` (a ValueError)
    before anything runs, with the same message the CLI prints (rules: worker/validation.py).
    """
    return execute(prepare(objective, use_daytona, **options), log_callback)
