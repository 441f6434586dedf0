"""Faults of the broker: Redis restarts mid-run, Redis gone for good, a run in a backlog."""

from __future__ import annotations

import time

from tests.procs import RedisServer, forge_env
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
    wait_for(lambda: client.llen("celery") == 2, 60, "the run to be published")
    redis_server.kill()
    t0 = time.monotonic()
    code = dispatcher.wait(60)  # grace 3 s + connection timeouts, far below a hang
    waited = time.monotonic() - t0
    text = log.read_text()
    assert code == 2, text[-3000:]
    assert "lost the result backend for over 3s" in text
    assert "forge status" in text and "Traceback" not in text
    assert waited < 45, waited


def test_run_waiting_in_a_backlog_completes_when_a_worker_arrives(redis_server, workers,
                                                                  artifacts, tmp_path):
    # Chord state (result_chord_expires) and results (result_expires) outlive the wait.
    env = forge_env(redis_server.url, artifacts, **FAST)
    manifest = sleepers_with(tmp_path / "c", 3, 1.0)
    dispatch_detached("backlog", manifest, env)
    time.sleep(2.0)  # nobody is consuming
    assert summary_missing(artifacts, "backlog")
    workers(env, n=1, concurrency=2)
    results = assert_once(wait_summary(artifacts, "backlog"), ["s00", "s01", "s02"])
    assert all(r["success"] for r in results.values())


def summary_missing(artifacts, run_id: str) -> bool:
    return not (artifacts / run_id / "summary.json").exists()
