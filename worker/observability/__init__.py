"""Observability: Sentry events, structured logs and Prometheus metrics (docs/observability.md).

All three are off by default and then cost nothing: without ``SENTRY_DSN`` the SDK is
never imported, without ``FORGE_METRICS_PORT`` no metric is defined or served, and logs
stay Celery's plain text unless ``FORGE_LOG_FORMAT=json``.

Hooks, so the tasks themselves need no edits: Celery signals (connected by
:func:`install`, which ``worker/app.py`` calls once) for workers and beat;
:func:`setup_process` for the CLI and a web app; :func:`report` and
:func:`sandbox_alive` / :func:`candidate_state` for what only the code knows (a
sandbox backend failure, a store write, a sandbox's life, a wait for a slot).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from worker import config
from worker.observability import context, logs, metrics, sentry
from worker.observability.scrub import process_scrubber

__all__ = ["candidate_state", "install", "report", "sandbox_alive", "setup_process"]

_installed = False


def install() -> None:
    """Connect the Celery signals (once per process; cheap: nothing is imported)."""
    global _installed
    if _installed:
        return
    # A bad value stops the process here, with the fix (as the app's other settings do),
    # rather than later inside a signal, where Celery would only log it.
    config.log_format()
    config.metrics_port()
    config.sentry_dsn()
    _installed = True
    # start-up: Celery loads only where its signals are connected; the lifecycle imports
    # this package also where there is no Celery (a sandbox test's bare interpreter)
    from celery import signals

    for signal, receiver in (
        (signals.celeryd_init, _worker_init),
        (signals.celeryd_after_setup, _worker_after_setup),
        (signals.after_setup_logger, _logger_ready),
        (signals.after_setup_task_logger, _logger_ready),
        (signals.beat_init, _beat_init),
        (signals.worker_ready, _worker_ready),
        (signals.worker_process_shutdown, _process_shutdown),
        (signals.worker_shutdown, _worker_shutdown),
        (signals.task_prerun, _task_prerun),
        (signals.task_postrun, _task_postrun),
        (signals.task_failure, _task_failure),
    ):
        signal.connect(receiver, weak=False)


def setup_process(service: str, level: int = logging.WARNING) -> None:
    """A process Celery does not start (``cli``, ``web``): JSON logs (from ``level`` up)
    and Sentry when configured. One call at its entry point; idempotent."""
    logs.setup_process(level)
    sentry.init(service)


def report(error: BaseException | str, failure: str, **tags: Any) -> None:
    """An application error the code caught (so the run goes on) as a Sentry event;
    nothing without ``SENTRY_DSN``. ``failure`` names the kind (sandbox_backend...)."""
    sentry.report(error, failure, **tags)


def sandbox_alive(backend: str, delta: int) -> None:
    """A sandbox of ``backend`` was created (+1) or deleted (-1): the gauge."""
    metrics.sandbox_alive(backend, delta)


def candidate_state(backend: str, state: str) -> None:
    """The lifecycle's candidate went ``waiting`` (for a sandbox slot) or ``running``."""
    metrics.candidate_state(backend, state)


# -- receivers ----------------------------------------------------------------------


def _worker_init(sender=None, instance=None, **_kw) -> None:
    context.worker_name = str(sender) if sender else None
    logs.worker_starting(instance)
    sentry.init("worker")
    metrics.init_worker()


def _worker_after_setup(sender=None, instance=None, **_kw) -> None:
    logs.worker_started(instance)


def _logger_ready(sender=None, logger=None, **_kw) -> None:
    logs.celery_logger_ready(logger)


def _beat_init(sender=None, **_kw) -> None:
    sentry.init("beat")


def _worker_ready(sender=None, **_kw) -> None:
    app = getattr(sender, "app", None)
    if app is not None:
        metrics.serve(app)


def _process_shutdown(**_kw) -> None:
    metrics.process_exit()
    sentry.flush()


def _worker_shutdown(**_kw) -> None:
    metrics.shutdown()
    sentry.flush()


def _task_prerun(sender=None, task_id=None, task=None, args=None, **_kw) -> None:
    ctx = context.enter(task or sender, task_id, args)
    if ctx.task_name == context.RUN_CANDIDATE and sentry.enabled():
        _learn_sandbox_values(args)
    sentry.tag_task(ctx)
    metrics.task_started(task or sender, ctx)


def _task_postrun(sender=None, task=None, retval=None, **_kw) -> None:
    ctx = context.current.get()
    if ctx is not None:
        metrics.task_finished(task or sender, ctx, retval)
        if ctx.task_name == context.COLLECT and isinstance(retval, dict):
            _discord_failure(retval)
    context.leave()


def _task_failure(sender=None, **_kw) -> None:
    ctx = context.current.get()
    if ctx is not None:
        metrics.task_failed(sender, ctx)


def _learn_sandbox_values(args: Any) -> None:
    """The values this candidate's sandbox gets are secrets to scrub from now on."""
    data = args[0] if args else None
    names = data.get("env_allow") if isinstance(data, dict) else None
    if isinstance(names, list | tuple):
        process_scrubber().add_sandbox_values([n for n in names if isinstance(n, str)],
                                              os.environ)


def _discord_failure(forge: dict) -> None:
    post = forge.get("discord")
    if isinstance(post, dict) and post.get("error"):
        sentry.report(f"Discord post failed: {post['error']}", "discord")
