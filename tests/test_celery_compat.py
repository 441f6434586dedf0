"""worker/celery_compat.py: one test per reliance on Celery's or kombu's internals, each
failing if an upgrade changes what it relies on; and two scheduled competitions
published at the same moment from one threads worker."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import pytest
from celery import Celery, chord, group
from celery.app import trace
from celery.backends import cache
from kombu import Producer, Queue

from tests.manifests import write_manifest
from tests.procs import CeleryWorker, call_task, forge_env, publish_task
from worker import celery_compat as compat


def redis_app(redis_server, name: str = "compat") -> Celery:
    app = Celery(name, broker=redis_server.url, backend=redis_server.url,
                 set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    result_serializer="json", result_accept_content=["json"])
    return app


# -- 1. re-entrant thread-scoped override ---------------------------------------------------


class Shared:
    def who(self) -> str:
        return "original"


def test_overrides_of_one_method_by_two_threads_never_undo_each_other():
    """Both threads inside their override at once (a barrier), then ``a`` leaves first:
    ``b`` still gets its own, ``a`` and a bystander get the original."""
    shared = Shared()
    both_in, a_left = threading.Barrier(2, timeout=10), threading.Event()
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def contender(name: str) -> None:
        with compat.for_this_thread(shared, "who", lambda original: name):
            both_in.wait()
            seen[name].append(shared.who())
            if name == "a":
                a_left.set()
                return
            a_left.wait(10)
            time.sleep(0.05)
            seen[name].append(shared.who())  # after ``a`` left its block
            with compat.for_this_thread(shared, "who", lambda original: original() + "+"):
                seen[name].append(shared.who())  # nested: the newest override
            seen[name].append(shared.who())
        seen[name].append(shared.who())

    threads = [threading.Thread(target=contender, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"a": ["a"], "b": ["b", "b", "original+", "b", "original"]}
    assert shared.who() == "original"


# -- 2. never_joined -----------------------------------------------------------------------


@pytest.mark.processes
def test_never_joined_registers_no_header_result_and_refuses_a_join(redis_server):
    """A group's results register with the backend's result consumer (``then`` calls
    ``add_pending_result``: a SUBSCRIBE each); inside ``never_joined`` they do not."""
    app = redis_app(redis_server)
    try:
        sig = app.signature("compat.nothing", args=(1,))

        def registered() -> int:
            pending = app.backend._pending_results
            return len(pending.concrete) + len(pending.weak)

        with compat.never_joined(app):
            kept = group([sig, sig.clone()]).apply_async()
            with pytest.raises(RuntimeError):
                app.AsyncResult("never-finishes").get(timeout=1)
        assert len(kept.results) == 2 and registered() == 0
        control = group([sig, sig.clone()]).apply_async()  # without it, they register
        assert len(control.results) == 2 and registered() == 2
    finally:
        app.close()


# -- 3. batched producer -----------------------------------------------------------------


@pytest.mark.processes
def test_a_batched_producer_carries_every_message_of_this_thread(redis_server):
    assert hasattr(Producer, "batch")  # kombu >= 5.7
    app = redis_app(redis_server)
    client = redis_server.client()
    try:
        with compat.batched_producer(app, max_size=2) as producer:
            ctx = app.producer_or_acquire()
            assert isinstance(ctx, nullcontext) and ctx.enter_result is producer
            other = ThreadPoolExecutor(1).submit(app.producer_or_acquire).result()
            assert not isinstance(other, nullcontext)  # another thread: the pool's
            for i in range(5):
                app.send_task("compat.nothing", args=(i,), task_id=f"b{i}")
        assert client.llen("celery") == 5
        assert not isinstance(app.producer_or_acquire(), nullcontext)
    finally:
        app.close()


# -- 4. the embedded mode's memory backend ------------------------------------------------


def test_the_memory_backend_is_widened_past_its_5000_keys():
    assert isinstance(cache._DUMMY_CLIENT_CACHE.limit, int)
    compat.widen_memory_backend(200_000)
    app = Celery("compat-memory", backend="cache+memory://", set_as_current=False)
    for i in range(6000):
        app.backend.store_result(f"wide-{i}", {"i": i}, "SUCCESS")
    assert app.backend.get_task_meta("wide-0")["result"] == {"i": 0}
    assert cache._DUMMY_CLIENT_CACHE.limit >= 200_000


# -- 5. a chord body's added kwargs ----------------------------------------------------------


def test_kwargs_added_to_a_built_chord_reach_its_body():
    app = Celery("compat-chord", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(name="compat.one")
    def one(x):
        return x

    @app.task(name="compat.body")
    def body(results, kept_task_ids=None):
        return {"results": results, "kept": kept_task_ids}

    canvas = chord(group(one.s(1), one.s(2)), body.s())
    compat.add_body_kwargs(canvas, kept_task_ids=["r:a"])
    assert canvas.apply_async().get() == {"results": [1, 2], "kept": ["r:a"]}
    message = json.loads(json.dumps(dict(canvas)))  # what a broker message carries
    assert message["kwargs"]["body"]["kwargs"] == {"kept_task_ids": ["r:a"]}


def test_an_embedded_worker_leaves_joins_allowed_when_it_stops():
    """An in-process worker's thread pool sets Celery's process-wide join flag; once the
    embedded worker has stopped, a result can be joined in this process again."""
    from celery import _state as celery_state

    from dispatcher.embedded import embedded_worker

    app = Celery("compat-embedded", broker="memory://", backend="cache+memory://",
                 set_as_current=False)

    @app.task(name="compat.echo")
    def echo(x):
        return x

    assert not celery_state.task_join_will_block()
    with embedded_worker(app, 1, local=False):
        assert celery_state.task_join_will_block()  # the control: the pool set it
        assert echo.delay(7).id
    assert not celery_state.task_join_will_block()


# -- 6. kombu's Redis layout ------------------------------------------------------------------


@pytest.mark.processes
def test_a_task_is_found_in_the_queue_then_in_the_unacked_hash(redis_server):
    app = redis_app(redis_server)
    client = redis_server.client()
    try:
        app.send_task("compat.nothing", task_id="q1")
        wanted = {"q1", "q2"}
        assert compat.broker_task_ids(client, "celery", wanted) == ({"q1"}, set())
        with app.connection_for_read() as conn:
            queue = conn.SimpleQueue("celery")
            message = queue.get(timeout=5)  # delivered, not acknowledged
            assert compat.broker_task_ids(client, "celery", wanted) == (set(), {"q1"})
            message.ack()
            queue.close()
        assert compat.broker_task_ids(client, "celery", wanted) == (set(), set())
    finally:
        app.close()


# -- 7. the result backend's keys ----------------------------------------------------------


@pytest.mark.processes
def test_task_states_are_read_where_the_backend_keeps_them(redis_server):
    app = redis_app(redis_server)
    client = redis_server.client()
    backend = app.backend
    try:
        assert compat.redis_client(backend) is backend.client
        assert compat.redis_client(Celery("m", backend="cache+memory://").backend) is None
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe(compat.task_meta_pattern(backend, "run1:"))
        time.sleep(0.1)
        backend.store_result("run1:a", {"ok": 1}, "SUCCESS")
        backend.store_result("run2:a", {"ok": 2}, "SUCCESS")
        assert client.exists(compat.task_meta_key(backend, "run1:a"))
        channels = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not channels:
            message = pubsub.get_message(timeout=0.5)
            if message:
                channels.add(message["channel"].decode())
        assert channels == {compat.task_meta_key(backend, "run1:a")}
        metas = compat.task_metas(backend, ["run1:a", "run2:a", "run3:a"])
        assert {k: m["result"] for k, m in metas.items()} == {"run1:a": {"ok": 1},
                                                              "run2:a": {"ok": 2}}
        assert compat.read_meta_once(backend, "run1:a")["status"] == "SUCCESS"
        assert compat.read_meta_once(backend, "run3:a") is None
        pubsub.close()
    finally:
        app.close()


# -- 8. the success line --------------------------------------------------------------------


def test_the_success_line_shows_the_summary_not_the_value(caplog):
    assert "%(return_value)s" in trace.LOG_SUCCESS
    app = Celery("compat-log", broker="memory://", backend="cache+memory://",
                 set_as_current=False)

    @app.task(name="compat.secret")
    def secret():
        return {"candidate_id": "c", "success": True, "output": "TOP-SECRET-OUTPUT"}

    from worker import tasklog

    tasklog.install()
    with caplog.at_level(logging.INFO, logger=compat.TRACE_LOGGER):
        secret.apply()
    lines = [r.getMessage() for r in caplog.records if r.name == compat.TRACE_LOGGER]
    assert any("succeeded in" in line and "candidate c: succeeded" in line for line in lines)
    assert all("TOP-SECRET-OUTPUT" not in line for line in lines), lines


# -- two competitions published at the same moment, one threads worker -------------------------

ECHO = """import sys
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write("# {who}\\n\\n" + sys.argv[1] + "\\n")
"""


def test_two_competitions_published_at_once_from_one_threads_worker_both_complete(
        redis_server, tmp_path):
    conf, artifacts, report = tmp_path / "conf", tmp_path / "artifacts", tmp_path / "report"
    toml = []
    for name, ids in (("first", ("f1", "f2")), ("second", ("s1", "s2"))):
        write_manifest(conf / name, {cid: ECHO.format(who=cid) for cid in ids})
        toml.append(f'[[competition]]\nname = "{name}"\nobjective = "Objective {name}"\n'
                    f'candidates = "{name}/candidates.toml"\ntimeout = 30\nevery = 3600\n')
    (conf / "forge.toml").write_text("\n".join(toml))
    env = forge_env(redis_server.url, artifacts, FORGE_COMPETITIONS=str(conf / "forge.toml"),
                    FORGE_TEST_BARRIER_REPORT=str(report))
    worker = CeleryWorker(env, "barrier", tmp_path, concurrency=6, pool="threads",
                          app="tests.barrier_worker").start()
    try:
        with ThreadPoolExecutor(2) as pool:
            started = list(pool.map(
                lambda name: call_task(redis_server, "dispatcher.scheduling.start_competition",
                                       name, "now", timeout=90), ("first", "second")))
        assert [s["status"] for s in started] == ["dispatched", "dispatched"], started
        summaries = {}
        deadline = time.monotonic() + 90
        for s in started:
            path = artifacts / s["run_id"] / "summary.json"
            while not path.is_file():
                assert time.monotonic() < deadline, worker.logtext()[-3000:]
                time.sleep(0.2)
            summaries[s["competition"]] = json.loads(path.read_text())
    finally:
        worker.stop()
    for name, ids in (("first", ["f1", "f2"]), ("second", ["s1", "s2"])):
        summary = summaries[name]
        assert summary["competition"] == name and summary["objective"] == f"Objective {name}"
        assert sorted(r["candidate_id"] for r in summary["results"]) == ids
        assert all(r["success"] for r in summary["results"]), summary["results"]
    # "second" published after "first" had left its overrides: its own were still there.
    assert json.loads(report.read_text()) == {"producer": True, "not_registered": True}


# -- 9. one round trip per stored state ------------------------------------------------------


def _client_commands(redis_server, action) -> list[tuple[str, ...]]:
    """The commands clients sent Redis while ``action`` ran (MONITOR), without the ones a
    script ran inside Redis."""
    seen: list[tuple[str, ...]] = []
    done = threading.Event()
    monitor_client, ender = redis_server.client(), redis_server.client()
    ender.ping()  # connected before: its handshake is not the action's

    def watch(ready: threading.Event) -> None:
        with monitor_client.monitor() as monitor:
            ready.set()
            for entry in monitor.listen():
                words = tuple(entry["command"].split())
                if words[:2] == ("ECHO", "end-of-action"):
                    break
                if entry.get("client_type") != "lua":
                    seen.append(words)
        done.set()

    ready = threading.Event()
    threading.Thread(target=watch, args=(ready,), daemon=True).start()
    assert ready.wait(5)
    time.sleep(0.1)  # MONITOR is answered before it sees commands: let it settle
    action()
    ender.echo("end-of-action")
    assert done.wait(10)
    return seen


@pytest.mark.processes
def test_a_state_is_stored_in_one_round_trip_and_never_over_a_success(redis_server):
    app = redis_app(redis_server, "one-trip")
    app.loader.override_backends = dict(compat.BACKEND_OVERRIDES)  # as worker/app.py does
    plain = redis_app(redis_server, "celery-own")
    client = redis_server.client()
    try:
        backend = app.backend
        assert type(backend).__name__ == "OneTripRedisBackend"
        backend.store_result("warm", 0, "SUCCESS")  # the script loaded once
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(compat.task_meta_key(backend, "t1"))
        time.sleep(0.1)

        def three_states() -> None:
            backend.store_result("t1", {"step": 1}, "PROGRESS")
            backend.store_result("t1", {"ok": True}, "SUCCESS")
            backend.store_result("t1", "late duplicate", "FAILURE")

        sent = _client_commands(redis_server, three_states)
        assert [w[0] for w in sent] == ["EVALSHA"] * 3, sent
        meta = json.loads(client.get(compat.task_meta_key(backend, "t1")))
        assert (meta["status"], meta["result"]) == ("SUCCESS", {"ok": True})
        assert 0 < client.ttl(compat.task_meta_key(backend, "t1")) <= backend.expires == 86400
        published = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(published) < 2:
            message = pubsub.get_message(timeout=0.5)
            if message:
                published.append(json.loads(message["data"])["status"])
        assert published == ["PROGRESS", "SUCCESS"]  # the refused FAILURE is not announced
        assert pubsub.get_message(timeout=0.3) is None
        pubsub.close()
        # The control: Celery's own backend reads the state before each write.
        plain.backend.client.ping()  # connected before: its handshake is not the write's
        sent = _client_commands(redis_server,
                                lambda: plain.backend.store_result("t2", 1, "SUCCESS"))
        assert [w[0] for w in sent] == ["GET", "MULTI", "SETEX", "PUBLISH", "EXEC"], sent
    finally:
        app.close()
        plain.close()


@pytest.mark.processes
def test_two_deliveries_storing_success_at_once_leave_exactly_one(redis_server):
    app = redis_app(redis_server, "one-trip-race")
    app.loader.override_backends = dict(compat.BACKEND_OVERRIDES)
    client = redis_server.client()
    rounds = 20
    barrier = threading.Barrier(2)

    def deliver(name: str) -> None:
        backend = app.backend  # one backend (and connection) per thread, as in a worker
        for i in range(rounds):
            barrier.wait(5)
            backend.store_result(f"race{i}", name, "SUCCESS")

    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(compat.task_meta_pattern(app.backend, "race"))
    time.sleep(0.1)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(deliver, ["first", "second"]))
        announced: dict[str, list[str]] = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(announced) < rounds:
            message = pubsub.get_message(timeout=0.5)
            if message:
                meta = json.loads(message["data"])
                announced.setdefault(meta["task_id"], []).append(meta["result"])
        while (message := pubsub.get_message(timeout=0.3)) is not None:
            meta = json.loads(message["data"])
            announced.setdefault(meta["task_id"], []).append(meta["result"])
        for i in range(rounds):
            stored = json.loads(client.get(compat.task_meta_key(app.backend, f"race{i}")))
            assert announced[f"race{i}"] == [stored["result"]]  # one write, the one kept
    finally:
        pubsub.close()
        app.close()


# -- 10. task events sent once per window ----------------------------------------------------


class EventFeed:
    """Task events as Flower gets them: every Redis message on the events exchange."""

    def __init__(self, redis_server):
        self.pubsub = redis_server.client().pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("*celeryev*")
        self.messages: list[list[dict]] = []

    def read(self, until, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.2)
            if message:
                body = json.loads(message["data"])["body"]
                events = json.loads(base64.b64decode(body))
                self.messages.append(events if isinstance(events, list) else [events])

    def events(self, kind: str) -> list[str]:
        return [e["uuid"] for batch in self.messages for e in batch if e["type"] == kind]

    def close(self) -> None:
        self.pubsub.close()


def _events_run(redis_server, tmp_path, window_ms: int, n: int = 12,
                pool: str = "prefork") -> EventFeed:
    env = forge_env(redis_server.url, tmp_path / f"artifacts{window_ms}{pool}",
                    FORGE_EVENT_WINDOW_MS=str(window_ms))
    worker = CeleryWorker(env, f"ev{window_ms}{pool}", tmp_path, concurrency=4,
                          pool=pool).start()
    feed = EventFeed(redis_server)
    try:
        time.sleep(0.2)
        app = Celery("events-client", broker=redis_server.url, set_as_current=False)
        app.conf.update(task_serializer="json", accept_content=["json"])
        ids = [app.send_task("worker.maintenance.reap_sandboxes", kwargs={"dry_run": True}).id
               for _ in range(n)]
        app.close()
        feed.read(lambda: len(set(feed.events("task-succeeded"))) >= n)
        assert sorted(feed.events("task-received")) == sorted(ids)
        assert sorted(feed.events("task-started")) == sorted(ids)
        assert sorted(feed.events("task-succeeded")) == sorted(ids)
    finally:
        worker.stop()
        feed.close()
    return feed


@pytest.mark.processes
def test_task_events_leave_a_worker_many_to_a_message(redis_server, tmp_path):
    n = 12
    windowed = _events_run(redis_server, tmp_path, 200, n)
    per_turn = _events_run(redis_server, tmp_path, 0, n)  # the control: Celery's own flush
    assert len(windowed.messages) * 2 <= 3 * n, [len(m) for m in windowed.messages]
    assert len(per_turn.messages) > len(windowed.messages), \
        ([len(m) for m in per_turn.messages], [len(m) for m in windowed.messages])
    # A threads pool (Daytona's) sends events from its own threads: the window is armed
    # through the hub's thread-safe door, and again nothing is lost.
    threads = _events_run(redis_server, tmp_path, 200, n, pool="threads")
    assert len(threads.messages) * 2 <= 3 * n, [len(m) for m in threads.messages]


@pytest.mark.processes
def test_a_stopping_worker_sends_the_events_its_window_still_holds(redis_server, tmp_path):
    env = forge_env(redis_server.url, tmp_path / "artifacts", FORGE_EVENT_WINDOW_MS="60000")
    worker = CeleryWorker(env, "held", tmp_path, concurrency=1).start()
    feed = EventFeed(redis_server)
    try:
        meta = publish_task(redis_server, "worker.maintenance.reap_sandboxes",
                            kwargs={"dry_run": True})
        assert meta["status"] == "SUCCESS"
        feed.read(lambda: False, timeout=1.0)
        assert feed.events("task-succeeded") == []  # held by the window (a minute long)
        worker.stop()
        feed.read(lambda: bool(feed.events("task-succeeded")), timeout=10)
        assert feed.events("task-succeeded") == [meta["task_id"]]
        assert feed.events("task-received") == [meta["task_id"]]
    finally:
        worker.stop()
        feed.close()


def test_a_window_whose_timer_was_dropped_is_armed_again():
    """On a real kombu hub: a window opens on the first buffered event and closes (one
    flush) after it; a window whose timer a reconnect dropped is armed again by the next
    event instead of holding every event until the worker stops."""
    from kombu.asynchronous import Hub
    from vine import promise

    cls = compat.WindowedEventsConsumer
    hub = Hub()
    flushes: list[float] = []
    consumer = cls.__new__(cls)  # the window's own state only: no broker, no blueprint
    consumer.hub, consumer.event_window, consumer._armed_at = hub, 0.05, None
    consumer._arm_promise = promise(consumer._arm_window)
    consumer._flush_events = lambda: flushes.append(time.monotonic())

    def turn_until(done, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            hub.run_once()

    try:
        for _ in range(5):  # five events inside one window: one flush
            consumer.on_send_event_buffered()
        turn_until(lambda: flushes)
        time.sleep(0.1)
        hub.run_once()
        assert len(flushes) == 1
        consumer.on_send_event_buffered()  # the next window...
        hub.run_once()
        assert consumer._armed_at is not None
        hub.timer.clear()  # ...loses its timer, as a reconnect's reset does
        consumer._armed_at -= 1.0  # long past its window
        consumer.on_send_event_buffered()
        turn_until(lambda: len(flushes) == 2)
        assert len(flushes) == 2
    finally:
        hub.close()


# -- 11. one synchronous Redis client per broker channel ----------------------------------


def test_a_redis_channel_keeps_one_sync_client_and_rebuilds_it_with_its_pool(redis_server):
    from kombu import Connection

    with Connection(redis_server.url) as conn:
        control = conn.channel()  # kombu's own: a new client for every command group
        with control.conn_or_acquire() as a, control.conn_or_acquire() as b:
            assert a is not b
        channel = conn.channel()
        compat.one_sync_client(channel)
        with channel.conn_or_acquire() as a, channel.conn_or_acquire() as b:
            assert a is b and a.ping()
        # the unacked index of a delivery and its ack go through it, and still work
        assert channel.client is not a  # the event loop's asynchronous client: its own
        Queue("probe-q")(channel).declare()
        Producer(channel).publish({"n": 1}, routing_key="probe-q")
        message = channel.basic_get("probe-q")  # delivered: in the unacked index
        assert message is not None and a.hexists("unacked", message.delivery_tag)
        message.ack()
        assert not a.hexists("unacked", message.delivery_tag)
        old_pool = channel.pool
        channel._pool = None  # a reconnect replaces the pool: the client follows it
        with channel.conn_or_acquire() as c:
            assert c is not a and c.connection_pool is channel.pool is not old_pool
            assert c.ping()
        control.close()
        channel.close()
    with Connection("memory://") as memory:
        before = memory.default_channel.__dict__.copy()
        compat.one_sync_client(memory.default_channel)
        assert memory.default_channel.__dict__ == before


def test_the_worker_consumer_gets_its_task_channel_with_one_sync_client(redis_server):
    cls = compat.WindowedEventsConsumer
    consumer = cls.__new__(cls)  # connect() only: an app, no hub, no blueprint
    consumer.app, consumer.hub, consumer.amqheartbeat = redis_app(redis_server), None, None
    consumer.first_connection_attempt, consumer.broker_connection_retry_attempt = True, 0
    conn = consumer.connect()
    try:
        channel = conn.default_channel
        with channel.conn_or_acquire() as a, channel.conn_or_acquire() as b:
            assert a is b and a.ping()
    finally:
        conn.release()
