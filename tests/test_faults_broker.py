"""Faults of the broker: Redis restarts mid-run, Redis gone for good, a run in a backlog."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from tests.procs import ROOT, RedisServer, forge_env
from tests.test_faults import (
    FAST,
    assert_once,
    dispatch_detached,
    meta,
    popen_forge,
    sleepers_with,
    wait_for,
    wait_summary,
)
from worker.keys import run_record_key


def test_redis_restart_mid_run_loses_nothing(workers, artifacts, tmp_path):
    server = RedisServer(tmp_path / "aof-redis", aof=True).start()
    try:
        env = forge_env(server.url, artifacts, **FAST)
        workers(env, n=2, concurrency=2)
        manifest = sleepers_with(tmp_path / "c", 6, 2.0)
        dispatcher = popen_forge(["run", "--candidates", str(manifest), "--run-id", "rr",
                                  "--no-post", "--json"], env, tmp_path / "dispatcher.log")
        client = server.client()
        wait_for(lambda: sum((meta(client, f"rr:s{i:02d}") or {}).get("status") == "PROGRESS"
                             for i in range(6)) >= 2, 60, "candidates to run")
        server.restart(down_for=2.0)  # AOF: queue, unacked tasks and chord state survive
        assert dispatcher.wait(120) == 0, (tmp_path / "dispatcher.log").read_text()[-3000:]
        results = assert_once(wait_summary(artifacts, "rr"), [f"s{i:02d}" for i in range(6)])
        assert all(r["success"] for r in results.values()), results
    finally:
        server.stop()


def test_broker_gone_for_good_is_a_clear_error_in_bounded_time(redis_server, artifacts,
                                                               tmp_path):
    env = forge_env(redis_server.url, artifacts, FORGE_BROKER_GRACE="3", **FAST)
    manifest = sleepers_with(tmp_path / "c", 2, 1.0)
    log = tmp_path / "dispatcher.log"
    # No worker: the dispatcher publishes, then waits; then Redis dies and stays dead.
    dispatcher = popen_forge(["run", "--candidates", str(manifest), "--run-id", "gone",
                              "--no-post"], env, log)
    client = redis_server.client()

    def published() -> bool:  # the queue holds both, and the run record says so
        raw = client.get(run_record_key("gone"))
        return client.llen("celery") == 2 and bool(raw) and \
            json.loads(raw)["status"] == "published"

    wait_for(published, 60, "the run to be published")
    redis_server.kill()
    t0 = time.monotonic()
    code = dispatcher.wait(60)  # grace 3 s + connection timeouts, far below a hang
    waited = time.monotonic() - t0
    text = log.read_text()
    assert code == 2, text[-3000:]
    assert "lost the result backend for over 3s" in text
    assert "forge status" in text and "Traceback" not in text
    assert waited < 45, waited


# `forge run`, with Redis killed the moment every task is out, before the run record is
# marked published (the only window the test above cannot reach by timing).
KILL_AFTER_PUBLISH = """
import os, signal, sys
from dispatcher import cli, runs
real = runs.after_publish
def killing(app, record):
    os.kill(int(sys.argv[1]), signal.SIGKILL)
    real(app, record)
runs.after_publish = killing
sys.exit(cli.main(sys.argv[2:]))
"""


def test_broker_gone_right_after_publishing_is_the_same_clear_error(redis_server, artifacts,
                                                                     tmp_path):
    env = forge_env(redis_server.url, artifacts, FORGE_BROKER_GRACE="3", **FAST)
    manifest = sleepers_with(tmp_path / "c", 2, 1.0)
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_PUBLISH, str(redis_server.proc.pid),
                           "run", "--candidates", str(manifest), "--run-id", "cut",
                           "--no-post"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=90)
    text = done.stdout + done.stderr
    assert redis_server.proc.wait(10) is not None  # the positive control: it did die there
    assert done.returncode == 2, text[-3000:]
    assert "every task is published, but its record could not be marked published" in text
    assert "lost the result backend for over 3s" in text
    assert "Traceback" not in text


EXPIRES = 5 * 24 * 3600  # neither Celery's default (1 day) nor the forge's (7 days)
def _broker_key(key: str) -> bool:
    """The broker's own keys (the queue, kombu's bindings, the unacked set)."""
    return key == "celery" or key.startswith(("_kombu", "unacked"))


def _ttls(client) -> dict[str, int]:
    """Every result-backend key and its TTL (-1: none), the broker's keys left out."""
    return {key.decode(): client.ttl(key) for key in client.keys("*")
            if not _broker_key(key.decode())}


def _short_lived(ttls: dict[str, int]) -> dict[str, int]:
    """Keys that would expire before FORGE_RESULT_EXPIRES (less a minute of test). Not
    the first-finished guard's (worker/delivery.py): it lives while a duplicate delivery
    of a running candidate could still finish, two visibility timeouts."""
    return {k: t for k, t in ttls.items()
            if t != -1 and t < EXPIRES - 60 and not re.match(r"forge[-:]first:", k)}


def test_run_waiting_in_a_backlog_completes_and_its_state_lives_result_expires(
        redis_server, workers, artifacts, tmp_path):
    """A run published while no worker consumes completes when one arrives; and its
    state in Redis (results, chord state, the run record) lives FORGE_RESULT_EXPIRES,
    read off the keys' TTLs: how long a backlog it outlives, without waiting that long.
    (A 2 s backlog is the functional part; the TTLs are the claim about days.)"""
    env = forge_env(redis_server.url, artifacts, FORGE_RESULT_EXPIRES=str(EXPIRES), **FAST)
    client = redis_server.client()
    manifest = sleepers_with(tmp_path / "c", 3, 1.0)
    dispatch_detached("backlog", manifest, env)
    time.sleep(2.0)  # nobody is consuming
    assert summary_missing(artifacts, "backlog")
    waiting = _ttls(client)
    assert any(re.match(r"forge[-:]run:", k) for k in waiting), waiting
    assert _short_lived(waiting) == {}, waiting
    workers(env, n=1, concurrency=2)
    # Two candidates done, the third still running: the chord is half joined.
    def part_way() -> dict[str, int] | None:
        done = sum((meta(client, f"backlog:s{i:02d}") or {}).get("status") == "SUCCESS"
                   for i in range(3))
        return _ttls(client) if done in (1, 2) else None

    mid = wait_for(part_way, 60, "the chord to be part way", every=0.02)
    assert _short_lived(mid) == {}, mid
    chord_state = {k: t for k, t in mid.items()
                   if not k.startswith(("celery-task-meta-backlog:s", "forge"))}
    assert chord_state, f"no chord state seen part way: {sorted(mid)}"
    results = assert_once(wait_summary(artifacts, "backlog"), ["s00", "s01", "s02"])
    assert all(r["success"] for r in results.values())
    done = _ttls(client)
    for i in range(3):
        assert EXPIRES - 120 <= done[f"celery-task-meta-backlog:s{i:02d}"] <= EXPIRES, done


def summary_missing(artifacts, run_id: str) -> bool:
    return not (artifacts / run_id / "summary.json").exists()
