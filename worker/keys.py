"""Every Redis key and Celery task id Dream Foundry makes, in one place.

Task ids are deterministic, so a redelivered task, ``forge status`` and ``forge resume``
find a run's tasks from its run id alone:

* ``<run_id>:<candidate_id>``: a candidate's ``run_candidate`` task; with K repeated
  trials, ``<run_id>:<candidate_id>:<k>`` (k = 1..K), one task per trial;
* ``<run_id>:collect``: the run's chord body (``collect_results``).

Result-backend keys:

* ``forge-bundle:<sha256>``: a directory candidate's files (``worker.bundles``), one key
  per content whichever runs, candidates or trials ship it, with the results' TTL.
"""

from __future__ import annotations

COLLECT = "collect"


def candidate_task_id(run_id: str, candidate_id: str, trial: int = 0, trials: int = 1) -> str:
    """A candidate's task id (deterministic: a redelivered task is recognisable); for
    trial ``trial`` (0-based) of ``trials`` > 1, ``<run>:<candidate>:<trial + 1>``."""
    if trials > 1:
        return f"{run_id}:{candidate_id}:{trial + 1}"
    return f"{run_id}:{candidate_id}"


def body_task_id(run_id: str) -> str:
    """The chord body's task id."""
    return f"{run_id}:{COLLECT}"


def bundle_key(sha256: str) -> str:
    """The result-backend key of a project bundle: addressed by its content's hash."""
    return f"forge-bundle:{sha256}"
