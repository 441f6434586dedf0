"""Every Redis key and Celery task id Dream Foundry makes, in one place.

Task ids are deterministic, so a redelivered task, ``forge status`` and ``forge resume``
find a run's tasks from its run id alone:

* ``<run_id>:<candidate_id>``: a candidate's ``run_candidate`` task;
* ``<run_id>:collect``: the run's chord body (``collect_results``).
"""

from __future__ import annotations

COLLECT = "collect"


def candidate_task_id(run_id: str, candidate_id: str) -> str:
    """A candidate's task id (deterministic: a redelivered task is recognisable)."""
    return f"{run_id}:{candidate_id}"


def body_task_id(run_id: str) -> str:
    """The chord body's task id."""
    return f"{run_id}:{COLLECT}"
