"""Every Redis key and Celery task id Dream Foundry makes, in one place, one convention.

**Redis keys** are ``forge:<what>:<id>[:<part>]``: one prefix, colon-separated, the kind
of record first, so ``SCAN forge:run:*`` finds one kind and nothing of Celery's or
kombu's (theirs, ``celery-task-meta-<id>``, the ``celery`` queue and ``unacked``, are
read only through worker/celery_compat.py). Each function says the Redis type and who
writes the key. Keys live in the result backend's Redis (the broker's when it is the
same server) and expire with the results (``FORGE_RESULT_EXPIRES``) unless noted.

**Task ids** are deterministic, so a redelivered task, ``forge status`` and ``forge
resume`` find a run's tasks from its run id alone:

* ``<run_id>:<candidate_id>``: a candidate's ``run_candidate`` task; with K repeated
  trials, ``<run_id>:<candidate_id>:<k>`` (k = 1..K), one task per trial;
* ``<run_id>:collect``: the run's chord body (``collect_results``).
"""

from __future__ import annotations

from datetime import UTC, datetime

PREFIX = "forge"

# -- task ids -------------------------------------------------------------------------

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


# -- runs (the dispatcher) --------------------------------------------------------------


def run_record_key(run_id: str) -> str:
    """STRING, JSON RunRecord: what a dispatcher published (dispatcher/runs.py)."""
    return f"{PREFIX}:run:{run_id}"


# Before one convention: read when a record is not found under its key (a run published
# by an older dispatcher, within FORGE_RESULT_EXPIRES of the upgrade).
LEGACY_RUN_RECORD_PREFIX = "forge-run:"


def run_spec_key(run_id: str) -> str:
    """STRING, JSON RunSpec of a large run, stored once instead of inline in every task
    message (dispatcher/dispatch.py writes it, the chord body reads it)."""
    return f"{PREFIX}:runspec:{run_id}"


def bundle_key(sha256: str) -> str:
    """STRING, a directory candidate's tar archive: one per content, whichever run ships
    it (dispatcher/dispatch.py stores it, worker/bundles.py fetches it)."""
    return f"{PREFIX}:bundle:{sha256}"


# -- one candidate task's deliveries (worker/delivery.py) -------------------------------


def attempts_key(task_id: str) -> str:
    """STRING counter: deliveries of a task so far (INCR), survives worker death."""
    return f"{PREFIX}:attempts:{task_id}"


def first_key(task_id: str) -> str:
    """STRING, JSON CandidateResult: the first of concurrent deliveries to finish (SET
    NX); expires after twice the visibility timeout."""
    return f"{PREFIX}:first:{task_id}"


# -- scheduled competitions (dispatcher/scheduling.py) ----------------------------------


def competition_slot_key(competition: str, slot: datetime) -> str:
    """STRING, the claiming task id (``<id>:published`` once out): one run per slot
    (SET NX); expires after the schedule grace plus an hour."""
    at = (slot if slot.tzinfo else slot.replace(tzinfo=UTC)).astimezone(UTC)
    return f"{PREFIX}:competition:{competition}:slot:{at:%Y%m%dT%H%M%SZ}"


# -- the Daytona sandbox budget (worker/budget.py), forge:budget:<name>:<what> ------------

BUDGET = "daytona"  # one budget per Daytona account this cluster uses


def leases_key(name: str = BUDGET) -> str:
    """ZSET lease id -> expiry (ms, Redis clock): the slots held."""
    return f"{PREFIX}:budget:{name}:leases"


def lease_info_key(name: str = BUDGET) -> str:
    """HASH lease id -> JSON {run, c, m, d}: whose lease, and its sandbox's size."""
    return f"{PREFIX}:budget:{name}:lease"


def waiters_key(name: str = BUDGET) -> str:
    """ZSET waiting request id -> expiry: who waits, for fairness."""
    return f"{PREFIX}:budget:{name}:waiters"


def waiter_run_key(name: str = BUDGET) -> str:
    """HASH waiting request id -> run id."""
    return f"{PREFIX}:budget:{name}:waiter"


def freed_channel(name: str = BUDGET) -> str:
    """Pub/sub channel: a slot was released or expired."""
    return f"{PREFIX}:budget:{name}:freed"


def run_key_prefix(name: str = BUDGET) -> str:
    """Prefix of the per-run keys the budget's Lua scripts build themselves:
    ``<prefix>learned:<run id>`` (STRING, the limit learned from refusals; a day) and
    ``<prefix>clock:<run clock>`` (STRING, ms when the run first asked for a slot)."""
    return f"{PREFIX}:budget:{name}:run:"


def learned_key(run_id: str, name: str = BUDGET) -> str:
    return f"{run_key_prefix(name)}learned:{run_id}"


def clock_key(clock: str, name: str = BUDGET) -> str:
    return f"{run_key_prefix(name)}clock:{clock}"


# -- metrics (worker/observability/metrics.py) ------------------------------------------

METRICS_LAST_SUCCESS_KEY = f"{PREFIX}:metrics:last-success"  # HASH competition -> unix time


def metrics_run_started_key(run_id: str) -> str:
    """STRING: the run's start was counted once across the cluster (SET NX)."""
    return f"{PREFIX}:metrics:run-started:{run_id}"


def metrics_run_finished_key(run_id: str) -> str:
    """STRING: the run's end was counted once across the cluster (SET NX)."""
    return f"{PREFIX}:metrics:run-finished:{run_id}"
