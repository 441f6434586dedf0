"""Sentry: application errors as events, with their run, candidate, competition and mode.

Initialised only with ``SENTRY_DSN`` set (``sentry_sdk`` is not even imported without it),
once per process: a worker's main process at ``celeryd_init`` (its pool processes inherit
the client; the SDK restarts its sender thread after the fork), beat at ``beat_init``,
the CLI and a web app through :func:`worker.observability.setup_process`.

What is an event: an exception a task lets out (the chord body failing, a judge crash
inside it, anything unexpected; the SDK's Celery integration reports it), and the
application errors our code catches to keep a run going, passed to :func:`report`: a
sandbox backend failing (not the candidate), the run store not written, Discord not
posted. A candidate that crashes, times out or writes no artifact is a *result*, never
an event. ERROR log lines become events too; INFO and WARNING lines are breadcrumbs.

Secrets never leave: every event and breadcrumb goes through the process's
:class:`~worker.observability.scrub.Scrubber` (``before_send``/``before_breadcrumb``),
the SDK sends no default PII, and frames carry no local variables
(``include_local_variables=False``): a candidate task's frames hold the candidate's
script and output, SDK clients holding the Daytona key, and derived forms of secrets
(headers, config objects) that no value match can be sure to catch; the tags and the
run directory say what the locals would have.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from worker import config
from worker.observability import context
from worker.observability.scrub import process_scrubber

_service: str | None = None  # set once the SDK is initialised in this process


def enabled() -> bool:
    return _service is not None


def init(service: str) -> bool:
    """Start the SDK in this process (``service``: worker, beat, cli, web); False when
    ``SENTRY_DSN`` is unset. Idempotent."""
    global _service
    if _service is not None:
        return True
    dsn = config.sentry_dsn()
    if dsn is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    scrubber = process_scrubber()

    def before_send(event: dict, _hint: dict) -> dict:
        return scrubber.scrub_data(event)

    def before_breadcrumb(crumb: dict, _hint: dict) -> dict:
        return scrubber.scrub_data(crumb)

    from importlib import metadata  # here: ~10 ms of every CLI start without Sentry

    try:
        version = metadata.version("dream-foundry")
    except metadata.PackageNotFoundError:
        version = "dev"
    sentry_sdk.init(
        dsn=dsn,
        release=f"dream-foundry@{version}",
        send_default_pii=False,
        include_local_variables=False,
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
        integrations=[
            # Errors only: no trace headers added to every task message.
            CeleryIntegration(propagate_traces=False, monitor_beat_tasks=False),
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
    )
    if service == "web":
        # The dashboard logs each failed request it answers with its error page; the
        # SDK's Starlette integration already reports the exception itself: once is enough.
        from sentry_sdk.integrations.logging import ignore_logger

        ignore_logger("dream_foundry.web")
    sentry_sdk.get_global_scope().set_tag("service", service)
    _service = service
    return True


def tag_task(ctx: context.TaskContext) -> None:
    """``task_prerun``: the task's isolation scope (the Celery integration opens one per
    task, before this signal) carries its run, candidate, competition and mode."""
    if _service is None:
        return
    import sentry_sdk

    tags = ctx.fields()
    tags.pop("worker", None)  # the event's server_name says where
    if ctx.task_name == context.COLLECT:
        tags["failure"] = "chord_body"  # what a body that raises is
    sentry_sdk.get_isolation_scope().set_tags(tags)


def report(error: BaseException | str, failure: str, **tags: Any) -> None:
    """One application error as an event, tagged ``failure`` (sandbox_backend,
    store_write, discord...) plus the running task's tags and ``tags``. A string is
    sent as an error message. Never raises: reporting must not fail a run."""
    if _service is None:
        return
    try:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            ctx = context.current.get()
            if ctx is not None:
                fields = ctx.fields()
                fields.pop("worker", None)
                scope.set_tags(fields)
            scope.set_tags({k: str(v) for k, v in tags.items() if v is not None})
            scope.set_tag("failure", failure)
            if isinstance(error, BaseException):
                sentry_sdk.capture_exception(error)
            else:
                sentry_sdk.capture_message(error, level="error")
    except Exception as exc:  # noqa: BLE001
        print(f"forge: could not report to Sentry: {type(exc).__name__}", file=sys.stderr)


def flush(timeout: float = 2.0) -> None:
    if _service is not None:
        import sentry_sdk

        sentry_sdk.flush(timeout)
