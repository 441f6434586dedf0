"""Preparing and executing a run, in embedded or distributed mode."""

from __future__ import annotations

from collections.abc import Callable

from dispatcher import dispatch
from dispatcher.manifest import Manifest, load_manifest
from dispatcher.plan import RunPlan, plan_run
from dispatcher.tracker import LogCallback, RunTracker
from worker import config
from worker.records import DEFAULT_OBJECTIVE, ForgeResult, Limits
from worker.validation import (
    check_artifacts_dir,
    check_objective,
    check_run_id,
    check_timeout,
    check_trials,
)

FALLBACK_NOTE = "(Daytona not configured, falling back to local)"
MAX_EMBEDDED_CONCURRENCY = 32


def prepare(
    objective: str = DEFAULT_OBJECTIVE,
    use_daytona: bool = False,
    *,
    candidates: str | None = None,
    manifest: Manifest | None = None,
    artifacts_dir: str | None = None,
    run_id: str | None = None,
    timeout: int | None = None,
    network: bool | None = None,
    env_allow: tuple[str, ...] | None = None,
    judge: str | None = None,
    post: bool | None = None,
    competition: str | None = None,
    limits: Limits | None = None,
    egress_allow: tuple[str, ...] | None = None,
    egress_deny: tuple[str, ...] | None = None,
    cpus: float | None = None,
    speed: str | None = None,
    exclusive: bool | None = None,
    max_sandboxes: int | None = None,
    trials: int | None = None,
) -> RunPlan:
    """Load and validate everything a run needs; raises InvalidInput (worker/validation.py:
    the objective, run id, timeout, artifacts directory), ManifestError or ConfigError."""
    check_objective(objective)
    if run_id is not None:
        check_run_id(run_id)
    if timeout is not None:
        check_timeout(timeout)
    if artifacts_dir is not None:
        check_artifacts_dir(artifacts_dir)
    if trials is not None:
        check_trials(trials)
    manifest = manifest or load_manifest(candidates)
    notes = []
    mode = "local"
    if use_daytona:
        if config.is_daytona_configured():
            mode = "daytona"
        else:
            notes.append(FALLBACK_NOTE)
    want_post = config.discord_webhook_url() is not None if post is None else post
    return plan_run(
        objective,
        manifest,
        execution_mode=mode,
        artifacts_dir=artifacts_dir or config.artifacts_dir(),
        run_id=run_id,
        timeout=timeout,
        network=network,
        env_allow=env_allow,
        judge=judge,
        post_to_discord=want_post,
        competition=competition,
        limits=limits,
        notes=notes,
        egress_allow=egress_allow,
        egress_deny=egress_deny,
        cpus=cpus,
        speed=speed,
        exclusive=exclusive,
        max_sandboxes=max_sandboxes,
        trials=trials,
    )


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

    width = max(1, min(len(plan.tasks), MAX_EMBEDDED_CONCURRENCY))  # K x N tasks
    with embedded_worker(app, width):
        dispatch.publish(plan)
        if on_published:
            on_published(plan)
        return dispatch.wait(plan, on_log=log_callback, on_tick=on_tick)


def run_forge(
    objective: str = DEFAULT_OBJECTIVE,
    use_daytona: bool = False,
    log_callback: LogCallback | None = None,
    **options,
) -> ForgeResult:
    """Run a whole competition and return its result (the Python API).

    ``log_callback(candidate_id, message)`` receives each candidate's lifecycle lines
    as they happen. ``options`` are those of :func:`prepare` (``candidates``,
    ``artifacts_dir``, ``run_id``, ``timeout``, ``network``, ``env_allow``, ``judge``,
    ``post``, ``limits``, ``egress_allow``, ``egress_deny``, ``cpus``, ``speed``,
    ``exclusive``, ``max_sandboxes``, ``trials``). Bad input raises ``InvalidInput`` (a ValueError)
    before anything runs, with the same message the CLI prints (rules: worker/validation.py).
    """
    return execute(prepare(objective, use_daytona, **options), log_callback)
