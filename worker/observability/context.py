"""What a log line or an error event belongs to: the task, its run and candidate, the
worker.

Celery's ``task_prerun`` sets it for the task's duration and ``task_postrun`` clears it.
A contextvar, so it is per thread under ``-P threads`` and in an embedded run, and per
process under prefork. Read by the JSON log formatter and by Sentry's tags.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

RUN_CANDIDATE = "worker.tasks.run_candidate"
COLLECT = "worker.tasks.collect_results"
START_COMPETITION = "dispatcher.scheduling.start_competition"


@dataclass(frozen=True)
class TaskContext:
    task_id: str | None = None
    task_name: str | None = None
    run_id: str | None = None
    candidate_id: str | None = None
    competition: str | None = None
    execution_mode: str | None = None
    worker: str | None = None

    def fields(self) -> dict[str, str]:
        """The set fields, for a log line or Sentry tags."""
        return {k: v for k, v in self.__dict__.items() if isinstance(v, str) and v}


current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "forge_task_context", default=None)

# This process's Celery node name (``w1@host``), set when a worker starts; a pool process
# inherits it. None outside workers.
worker_name: str | None = None


MAX_FIELD = 200  # characters: a message from the broker is not trusted to be sane


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_FIELD else None


def from_task(task: Any, task_id: str | None, args: Any) -> TaskContext:
    """The context of a task about to run, from its name and arguments (never trusted
    further than "a string where a string should be")."""
    name = getattr(task, "name", None)
    request = getattr(task, "request", None)
    worker = _text(getattr(request, "hostname", None)) or worker_name
    args = list(args or ())
    run_id = candidate_id = competition = mode = None
    data: Any = None
    if name == RUN_CANDIDATE and args:
        data = args[0]
        if isinstance(data, dict):
            candidate_id = _text(data.get("candidate_id"))
    elif name == COLLECT and len(args) > 1:
        data = args[1]
    elif name == START_COMPETITION and args:
        competition = _text(args[0])
    if isinstance(data, dict):
        run_id = _text(data.get("run_id"))
        competition = _text(data.get("competition"))
        mode = _text(data.get("execution_mode"))
    return TaskContext(task_id=_text(task_id), task_name=_text(name), run_id=run_id,
                       candidate_id=candidate_id, competition=competition,
                       execution_mode=mode, worker=worker)


def enter(task: Any, task_id: str | None, args: Any) -> TaskContext:
    ctx = from_task(task, task_id, args)
    current.set(ctx)
    return ctx


def leave() -> None:
    current.set(None)
