"""One candidate task's deliveries: redelivery, attempt count, and first finished wins.

A candidate task is ``acks_late``: a worker lost mid-run gets it redelivered, and a slow
one may see a duplicate run beside it. ``DeliveryGuard`` keeps that safe:

* ``arrive()``: a delivery whose task already finished returns the stored result
  instead of running again; otherwise it gets its attempt number, counted in the result
  backend (survives worker death), and is ``exhausted`` past ``MAX_ATTEMPTS`` (a
  candidate that keeps killing its worker);
* ``finish(result)``: of deliveries that ran at the same time, the first to finish
  wins; every delivery returns (and stores) that one record.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from worker.app import MAX_ATTEMPTS, RESULT_EXPIRES, VISIBILITY_TIMEOUT

logger = logging.getLogger("dream_foundry")


def attempts_key(task_id: str) -> str:
    return f"forge-attempts:{task_id}"


def first_key(task_id: str) -> str:
    return f"forge-first:{task_id}"


def exhausted_message(attempt: int) -> str:
    """Why delivery number ``attempt`` (past ``MAX_ATTEMPTS``) does not run the candidate."""
    return (f"Worker lost {attempt - 1} times while running this candidate "
            f"(retry limit {MAX_ATTEMPTS}); it may be killing its worker")


@dataclass(frozen=True)
class Arrival:
    """What ``DeliveryGuard.arrive`` found."""

    earlier: dict[str, Any] | None  # the result an earlier delivery stored: return it
    attempt: int

    @property
    def exhausted(self) -> bool:
        """Delivered more often than ``MAX_ATTEMPTS``: the candidate is not run again."""
        return self.attempt > MAX_ATTEMPTS



class DeliveryGuard:
    """The redelivery / attempt / first-finished rules of one bound Celery task."""

    def __init__(self, task) -> None:
        self.task = task
        self.task_id: str | None = task.request.id  # None: called directly, not delivered

    def arrive(self) -> Arrival:
        if not self.task_id:
            return Arrival(None, 1)
        earlier, attempt = self._delivery()
        if earlier is not None:
            logger.info("%s: redelivered after it finished; keeping the stored result",
                        self.task_id)
        return Arrival(earlier, attempt)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """The record every delivery of this task returns: the first one stored."""
        return self._first_finished(result) if self.task_id else result

    # -- the result backend

    def _delivery(self) -> tuple[dict[str, Any] | None, int]:
        """(the stored result if an earlier delivery finished, this delivery's number).

        On Redis one pipelined round trip (GET meta, INCR and EXPIRE the counter) instead
        of three: at thousands of trivial candidates every round trip per task shows.
        """
        from worker.states import is_redis

        backend = self.task.backend
        if is_redis(backend):
            key = attempts_key(self.task_id)
            try:
                with backend.client.pipeline() as pipe:
                    pipe.get(backend.get_key_for_task(self.task_id))
                    pipe.incr(key)
                    pipe.expire(key, RESULT_EXPIRES)
                    raw, count, _ = pipe.execute()
                return _succeeded(backend.decode_result(raw) if raw else {}), int(count)
            except Exception:  # noqa: BLE001 - a Redis blip: the one-call-at-a-time path retries
                pass
        earlier = self._finished_before()
        return (earlier, 0) if earlier is not None else (None, self._attempt())

    def _attempt(self) -> int:
        """Count deliveries of this task id in the result backend (survives worker death)."""
        key = attempts_key(self.task_id)
        backend = self.task.backend
        try:
            n = int(backend.incr(key))
            if hasattr(backend, "expire"):
                backend.expire(key, RESULT_EXPIRES)
            return n
        except Exception:  # noqa: BLE001 - a backend without incr: no bound, count once
            return 1

    def _finished_before(self) -> dict[str, Any] | None:
        """A redelivered task whose earlier delivery already stored its result returns that."""
        try:
            meta = self.task.backend.get_task_meta(self.task_id)
        except Exception:  # noqa: BLE001
            return None
        return _succeeded(meta)

    def _first_finished(self, result: dict[str, Any]) -> dict[str, Any]:
        """Of deliveries of one task that ran at the same time, the first to finish wins.

        Celery's own "never overwrite SUCCESS" is read-then-write; a SET NX here is
        atomic, so every delivery returns (and stores) the same record and the chord
        body, a re-sent body and ``forge resume`` all read one result. Kept while a
        duplicate could still run.
        """
        from worker.states import is_redis

        if not is_redis(self.task.backend):  # embedded: no duplicates
            earlier = self._finished_before()
            return result if earlier is None else earlier
        client = self.task.backend.client
        try:
            if client.set(first_key(self.task_id), json.dumps(result), nx=True,
                          ex=2 * VISIBILITY_TIMEOUT + 60):
                return result
            raw = client.get(first_key(self.task_id))
        except Exception:  # noqa: BLE001 - Redis blip: Celery's own check still applies
            return result
        return json.loads(raw) if raw else result


def _succeeded(meta: dict[str, Any]) -> dict[str, Any] | None:
    if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
        return meta["result"]
    return None
