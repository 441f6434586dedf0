"""Reading many tasks' states from the result backend at once.

One ``mget`` per chunk, whatever the backend: Redis answers a list, the embedded memory
cache a dict. Used by the dispatcher's progress tracker, ``forge status``/``resume``
and the chord body of a resumed run.
"""

from __future__ import annotations

from typing import Any

from worker import celery_compat

task_metas = celery_compat.task_metas  # task id -> meta; a task with no state absent


def stored_results(backend, task_ids: list[str]) -> list[dict[str, Any]]:
    """The result dicts of the tasks among ``task_ids`` that finished (SUCCESS)."""
    return [m["result"] for m in task_metas(backend, task_ids).values()
            if m.get("status") == "SUCCESS" and isinstance(m.get("result"), dict)]
