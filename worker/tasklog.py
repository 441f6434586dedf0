"""Celery workaround: the worker's per-task success line, without the task's return value.

Celery's tracer (``celery.app.trace``) logs every task that succeeds, at INFO, as
``Task NAME[ID] succeeded in Ts: <repr of the return value>`` (``LOG_SUCCESS``; the repr
is cut at the task's ``resultrepr_maxsize``, 1 KiB). Our return values are a candidate's
whole result (its output and its artifact: text a candidate chose) and the collected
run, so that line put candidate output into every worker's log, once per task. Celery
has no setting to leave the value out (and turning the logger down would lose the line
itself), so a filter on that one logger swaps the value for a one-line summary of it.
The summary is made from the real return value, which Celery hands to the
``task_success`` signal just before it logs the line, in the same thread. The full
result stays where it belongs: the result backend and the run directory.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.app import trace
from celery.signals import task_success

TRACE_LOGGER = "celery.app.trace"
# A task's ``resultrepr_maxsize``: Celery builds the repr of every return value (for
# that line, and in prefork for the task-succeeded event Flower shows) whether or not
# it is logged; at its default 1 KiB that was ~0.25 ms of a pool process per candidate,
# and up to 1 KiB of candidate output in every event. 64 characters say which candidate
# and whether it succeeded; the line itself carries the summary below.
RESULT_REPR_MAX = 64
NO_SUMMARY = "(result in the result backend)"
MAX_SUMMARY = 200  # characters

_last = threading.local()  # the summary of the task this thread just finished


def summarize(result: Any) -> str:
    """One line saying what a task returned, never the content itself."""
    if isinstance(result, dict):
        if "candidate_id" in result and "success" in result:  # a CandidateResult
            ok = bool(result.get("success"))
            runtime = result.get("runtime_seconds")
            text = f"candidate {result['candidate_id']}: {'succeeded' if ok else 'failed'}"
            if isinstance(runtime, int | float):
                text += f" in {runtime:.2f}s"
            if not ok and result.get("error_message"):
                text += f" ({str(result['error_message'])[:120]})"
        elif "run_id" in result and "scores" in result:  # a ForgeResult
            text = (f"run {result['run_id']}: {len(result.get('scores') or [])} candidates, "
                    f"winner {result.get('winner_id') or 'none'}")
        elif "status" in result:  # start_competition and kin
            text = f"status {result['status']}" + (
                f", run {result['run_id']}" if result.get("run_id") else "")
        else:
            text = f"a dict of {len(result)} keys"
    elif result is None or isinstance(result, bool | int | float):
        text = repr(result)
    else:
        text = f"a {type(result).__name__}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_SUMMARY else text[:MAX_SUMMARY] + "…"


def _remember(sender=None, result: Any = None, **_kwargs) -> None:
    _last.summary = summarize(result)


class SuccessSummary(logging.Filter):
    """Rewrites Celery's success line: the return value becomes its summary."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == trace.LOG_SUCCESS and isinstance(record.args, dict):
            summary = getattr(_last, "summary", None) or NO_SUMMARY
            _last.summary = None
            context = {**record.args, "return_value": summary}
            record.args = context
            record.data = context  # what Celery passes custom handlers as extra
        return True


_installed = False


def install() -> None:
    """Once per process, before any task runs (worker.tasks imports it)."""
    global _installed
    if _installed:
        return
    _installed = True
    task_success.connect(_remember, weak=False)
    logging.getLogger(TRACE_LOGGER).addFilter(SuccessSummary())
