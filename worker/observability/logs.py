"""``FORGE_LOG_FORMAT=json``: one JSON object per line, from workers, beat and the CLI.

Each line: ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message``,
and where they apply ``worker`` (the Celery node), ``task_id``, ``task``, ``run_id``,
``candidate_id``, ``competition``, ``execution_mode`` (from the running task, see
``context``), ``exception`` (the formatted traceback). Plain text stays the default.

Celery configures the worker's and beat's logging itself (``worker_hijack_root_logger``
is off here, so it adds its handlers to the root, ``celery.task`` and multiprocessing
loggers without removing others); the ``after_setup_logger`` /
``after_setup_task_logger`` signals give each of its handlers our formatter, so Celery's
log file option and levels keep working. Two things Celery writes before that: the
worker's start-up banner (printed; in JSON mode it becomes one log line instead) and
warnings (captured into logging from the start). Beat's banner is printed before any
hook runs: ``CELERY_QUIET=1`` (Celery's ``--quiet``) leaves it out.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from worker import config
from worker.observability import context

# Attributes every LogRecord has; anything else a caller passed in ``extra`` is a field.
_STANDARD = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime",
    "data",  # Celery's copy of its own message arguments
    "color_message"}  # uvicorn's copy of its message with terminal colours


def enabled() -> bool:
    return config.log_format() == "json"


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON (newlines in messages and tracebacks escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = context.current.get()
        if ctx is not None:
            fields = ctx.fields()
            if "task_name" in fields:
                fields["task"] = fields.pop("task_name")
            out.update(fields)
        if "worker" not in out and context.worker_name:
            out["worker"] = context.worker_name
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class _Early(logging.StreamHandler):
    """Our handler until Celery sets up its own (then removed)."""


def _json_handlers(logger: logging.Logger | None) -> None:
    if logger is None:
        return
    for handler in list(logger.handlers):
        if isinstance(handler, _Early):
            logger.removeHandler(handler)
        elif not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())


# -- workers and beat (Celery signals, connected by worker.observability) ----------------


def worker_starting(instance: Any) -> None:
    """``celeryd_init``: before Celery sets up logging. JSON from the first line on: the
    banner becomes a log line (see ``worker_started``), warnings go to logging."""
    if not enabled():
        return
    if instance is not None:
        instance.quiet = True
    root = logging.getLogger()
    handler = _Early(sys.__stderr__)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root._rudimentary_setup = True  # Celery adds its own handler anyway (then ours goes)
    logging.captureWarnings(True)


def worker_started(instance: Any) -> None:
    """``celeryd_after_setup``: the banner's information, as one JSON line."""
    if not enabled() or instance is None:
        return
    try:
        info = instance.startup_info(artlines=False)
    except Exception:  # noqa: BLE001 - the banner is a courtesy
        return
    logging.getLogger("celery.worker").info("worker starting", extra={"startup": info})


def celery_logger_ready(logger: logging.Logger | None) -> None:
    """``after_setup_logger`` / ``after_setup_task_logger``: Celery's handlers format JSON."""
    if not enabled():
        return
    _json_handlers(logger)
    if logger is logging.getLogger():
        # start-up: Celery only where the root logger is configured (not in the lifecycle)
        from celery.utils.log import get_multiprocessing_logger

        _json_handlers(get_multiprocessing_logger())


# -- the CLI and a web app --------------------------------------------------------------


def setup_process(level: int = logging.WARNING) -> None:
    """A process Celery does not set up (the CLI, a web app): JSON on stderr when asked;
    otherwise logging stays as it was (Python's default: warnings and up, plain)."""
    if not enabled():
        return
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    logging.captureWarnings(True)
