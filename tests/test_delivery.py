"""The delivery guard on a real Redis result backend: redelivery, attempts, first wins.

(Deliveries racing each other: tests/test_races.py.)
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from worker import delivery
from worker.app import MAX_ATTEMPTS, RESULT_EXPIRES, VISIBILITY_TIMEOUT
from worker.delivery import Arrival, DeliveryGuard, exhausted_message


@pytest.fixture()
def backend(redis_server):
    from celery import Celery

    app = Celery("delivery-tests", broker="memory://", backend=redis_server.url)
    yield app.backend
    app.close()


def bound(backend, task_id: str | None = "run-1:alpha"):
    return SimpleNamespace(request=SimpleNamespace(id=task_id), backend=backend)


def test_each_delivery_gets_the_next_attempt_number(backend, redis_server):
    got = [DeliveryGuard(bound(backend)).arrive() for _ in range(MAX_ATTEMPTS + 1)]
    assert got == [Arrival(None, n) for n in range(1, MAX_ATTEMPTS + 2)]
    assert [a.exhausted for a in got] == [False] * MAX_ATTEMPTS + [True]
    client = redis_server.client()
    assert int(client.get(delivery.attempts_key("run-1:alpha"))) == MAX_ATTEMPTS + 1
    assert RESULT_EXPIRES - 60 <= client.ttl(delivery.attempts_key("run-1:alpha")) \
        <= RESULT_EXPIRES
    assert DeliveryGuard(bound(backend, "run-1:beta")).arrive() == Arrival(None, 1)


def test_the_delivery_past_the_limit_says_how_often_the_worker_was_lost(backend):
    """Delivery MAX_ATTEMPTS + 1 follows MAX_ATTEMPTS lost workers: its failed result
    (worker/tasks.py) names that count and the limit."""
    *_, last = [DeliveryGuard(bound(backend)).arrive() for _ in range(MAX_ATTEMPTS + 1)]
    assert last.exhausted
    assert exhausted_message(last.attempt) == (
        f"Worker lost {MAX_ATTEMPTS} times while running this candidate "
        f"(retry limit {MAX_ATTEMPTS}); it may be killing its worker")


def _broken_pipeline(*args, **kwargs):
    raise ConnectionError("pipeline lost")


def _commands(client) -> dict[str, int]:
    """Calls per command the server ran since its last CONFIG RESETSTAT."""
    return {name.removeprefix("cmdstat_"): stats["calls"]
            for name, stats in client.info("commandstats").items()}


def test_on_redis_a_delivery_is_read_and_counted_in_one_round_trip(backend, redis_server):
    """The pipelined path: the stored result, the counter and its expiry in one
    MULTI/EXEC, not the one-call-at-a-time fallback (GET, INCRBY, EXPIRE apart), which
    returns the same values: only the server's command counts tell them apart."""
    client = redis_server.client()
    backend.client.ping()  # the backend's connection is made (and introduced) before
    client.config_resetstat()
    assert DeliveryGuard(bound(backend)).arrive() == Arrival(None, 1)
    ran = _commands(client)
    assert {c: ran.get(c, 0) for c in ("multi", "get", "incrby", "expire", "exec")} == \
        dict(multi=1, get=1, incrby=1, expire=1, exec=1)
    # positive control: the fallback runs the same three commands, without MULTI/EXEC
    backend.client.pipeline = _broken_pipeline
    client.config_resetstat()
    assert DeliveryGuard(bound(backend)).arrive() == Arrival(None, 2)
    ran = _commands(client)
    assert {c: ran.get(c, 0) for c in ("multi", "get", "incrby", "expire", "exec")} == \
        dict(multi=0, get=1, incrby=1, expire=1, exec=0)


def test_a_redelivery_after_the_result_was_stored_says_so_in_the_log(backend, caplog):
    """The operator's sign of a redelivered finished task, naming it; a first delivery
    logs no such line."""
    caplog.set_level(logging.INFO, logger="dream_foundry")
    DeliveryGuard(bound(backend)).arrive()
    assert [r for r in caplog.records if "redelivered" in r.getMessage()] == []
    backend.store_result("run-1:alpha", {"candidate_id": "alpha"}, "SUCCESS")
    DeliveryGuard(bound(backend)).arrive()
    assert [r.getMessage() for r in caplog.records if r.name == "dream_foundry"] == [
        "run-1:alpha: redelivered after it finished; keeping the stored result"]


def test_a_delivery_after_the_result_was_stored_returns_it(backend):
    stored = {"candidate_id": "alpha", "success": True, "output": "first"}
    backend.store_result("run-1:alpha", stored, "SUCCESS")
    arrival = DeliveryGuard(bound(backend)).arrive()
    assert arrival.earlier == stored


def test_a_stored_failure_or_progress_is_not_a_finished_result(backend):
    backend.store_result("run-1:alpha", {"candidate_id": "alpha", "log": []}, "PROGRESS")
    assert DeliveryGuard(bound(backend)).arrive() == Arrival(None, 1)
    backend.store_result("run-1:beta", "not a record", "SUCCESS")
    assert DeliveryGuard(bound(backend, "run-1:beta")).arrive() == Arrival(None, 1)


def test_the_first_to_finish_wins_and_its_record_lives_while_duplicates_may(backend,
                                                                           redis_server):
    first = DeliveryGuard(bound(backend)).finish({"candidate_id": "alpha", "n": 1})
    second = DeliveryGuard(bound(backend)).finish({"candidate_id": "alpha", "n": 2})
    assert first == second == {"candidate_id": "alpha", "n": 1}
    client = redis_server.client()
    key = delivery.first_key("run-1:alpha")
    assert json.loads(client.get(key)) == first
    assert 2 * VISIBILITY_TIMEOUT <= client.ttl(key) <= 2 * VISIBILITY_TIMEOUT + 60


def test_a_direct_call_is_no_delivery(backend, redis_server):
    guard = DeliveryGuard(bound(backend, None))
    assert guard.arrive() == Arrival(None, 1)
    assert guard.finish({"n": 1}) == {"n": 1}
    client = redis_server.client()
    assert client.keys("*") == []
    # positive control: a delivered call leaves its counter and its first record
    delivered = DeliveryGuard(bound(backend))
    delivered.arrive()
    delivered.finish({"n": 1})
    assert sorted(client.keys("*")) == sorted(
        k.encode() for k in (delivery.attempts_key("run-1:alpha"),
                             delivery.first_key("run-1:alpha")))


def test_without_redis_the_stored_result_still_wins():
    """Embedded mode (one process, a memory backend): no counter beyond one, and a
    stored result is the one returned."""
    import uuid

    from celery import Celery

    app = Celery("delivery-memory", broker="memory://", backend="cache+memory://")
    task_id = f"run-{uuid.uuid4().hex[:8]}:alpha"  # the memory cache is the process's
    try:
        guard = DeliveryGuard(bound(app.backend, task_id))
        assert guard.arrive() == Arrival(None, 1)
        assert guard.finish({"n": 1}) == {"n": 1}
        app.backend.store_result(task_id, {"n": 0}, "SUCCESS")
        assert guard.finish({"n": 1}) == {"n": 0}
        assert guard.arrive() == Arrival({"n": 0}, 0)
    finally:
        app.close()


def test_a_failing_pipeline_falls_back_to_one_call_at_a_time(backend, redis_server):
    """A Redis blip in the pipelined round trip: the guard asks again, one call at a
    time, and counts and keeps the same as the pipelined path."""
    backend.client.pipeline = _broken_pipeline
    guard = DeliveryGuard(bound(backend, "run-3:alpha"))
    assert [guard.arrive() for _ in range(2)] == [Arrival(None, 1), Arrival(None, 2)]
    client = redis_server.client()
    key = delivery.attempts_key("run-3:alpha")
    assert int(client.get(key)) == 2
    assert RESULT_EXPIRES - 60 <= client.ttl(key) <= RESULT_EXPIRES
    del backend.client.pipeline  # storing the result pipelines too
    backend.store_result("run-3:alpha", {"candidate_id": "alpha", "n": 1}, "SUCCESS")
    backend.client.pipeline = _broken_pipeline
    assert guard.arrive() == Arrival({"candidate_id": "alpha", "n": 1}, 0)
    assert int(client.get(key)) == 2  # a finished task's redelivery is not an attempt


def test_a_first_record_gone_before_it_is_read_leaves_this_delivery_its_own(
        backend, redis_server):
    """Another delivery won (SET NX refused), but its record expired before the GET that
    reads it: this delivery keeps its own result instead of failing."""
    client = redis_server.client()
    key = delivery.first_key("run-4:alpha")
    client.set(key, json.dumps({"candidate_id": "alpha", "n": 1}))
    real_get = backend.client.get

    def expired_first(name, *args, **kwargs):
        if name == key:
            client.delete(key)  # it expires right between the SET NX and this GET
        return real_get(name, *args, **kwargs)

    backend.client.get = expired_first
    mine = {"candidate_id": "alpha", "n": 2}
    assert DeliveryGuard(bound(backend, "run-4:alpha")).finish(mine) == mine
