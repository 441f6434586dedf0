"""The run store end to end: real runs (embedded, and distributed on real celery workers
with a real PostgreSQL), the store agreeing with the run directory, in-flight states,
the CLI on a machine without the workers' disk, and a store outage losing nothing."""

from __future__ import annotations

import json
import time

import pytest

from dispatcher import run_forge
from tests.manifests import FIXTURES, sleepers
from tests.procs import CeleryWorker, PostgresServer, call_task, forge_env, run_forge_cli
from tests.store_helpers import assert_store_agrees_with_run_dir


@pytest.mark.processes
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_embedded_run_and_its_store_agree(backend, tmp_path, monkeypatch, request):
    from worker.store import open_store

    artifacts = tmp_path / "artifacts"
    if backend == "postgresql":
        monkeypatch.setenv("FORGE_DATABASE_URL", request.getfixturevalue("pg_url"))
    result = run_forge("Say hello", candidates=str(FIXTURES / "basic"),
                       artifacts_dir=str(artifacts), run_id=f"emb-{backend}", post=False)
    store = open_store(artifacts_dir=str(artifacts))
    assert store.backend == backend
    assert (artifacts / "forge.db").exists() == (backend == "sqlite")
    assert_store_agrees_with_run_dir(store, artifacts / f"emb-{backend}")
    summary = store.run_summary(f"emb-{backend}")
    assert summary.status == "finished" and summary.states.done == 3
    assert summary.states.failed == 1  # the crasher
    assert store.load_result(f"emb-{backend}").to_dict() == result.to_dict()


def test_a_distributed_run_on_postgres_is_read_where_its_disk_is_not(
        redis_server, workers, artifacts, tmp_path, pg_url):
    """Workers write PostgreSQL and their artifacts dir; the CLI, given another (empty)
    artifacts dir and the same FORGE_DATABASE_URL, lists and shows the run."""
    from worker.store import open_store

    env = forge_env(redis_server.url, artifacts, FORGE_DATABASE_URL=pg_url)
    workers(env, n=2, concurrency=2)
    manifest = sleepers(tmp_path / "cands", 4, seconds=0.2)
    done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "dist-store",
                          "--json", "--no-post"], env)
    assert done.returncode == 0, done.stderr
    assert_store_agrees_with_run_dir(open_store(pg_url), artifacts / "dist-store")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    remote = forge_env(None, elsewhere, FORGE_DATABASE_URL=pg_url)
    listing = run_forge_cli(["list"], remote)
    assert listing.returncode == 0, listing.stderr
    assert "dist-store" in listing.stdout and "finished" in listing.stdout
    assert "forge:***@127.0.0.1" in listing.stdout and PostgresServer.PASSWORD not in \
        listing.stdout + listing.stderr
    status = run_forge_cli(["status", "dist-store", "--json"], remote)
    assert status.returncode == 0, status.stderr
    summary = json.loads((artifacts / "dist-store" / "summary.json").read_text())
    assert {k: v for k, v in json.loads(status.stdout).items() if k != "results"} == \
        {k: v for k, v in summary.items() if k != "results"}
    human = run_forge_cli(["status", "dist-store"], remote)
    assert human.returncode == 0 and "s000" in human.stdout
    assert list(elsewhere.iterdir()) == []  # nothing was read from (or written to) disk
    # The control: without the store, that machine knows nothing of the run.
    blind = run_forge_cli(["status", "dist-store"], forge_env(None, elsewhere))
    assert blind.returncode == 2 and "no finished run" in blind.stderr


def test_in_flight_states_show_queued_running_and_done(
        redis_server, workers, artifacts, tmp_path, pg_url):
    """One worker slot, three slow candidates: the store shows each candidate queued,
    then running, then done, never going back, and at one moment all three states."""
    from worker.store import open_store

    env = forge_env(redis_server.url, artifacts, FORGE_DATABASE_URL=pg_url)
    manifest = sleepers(tmp_path / "cands", 3, seconds=1.5)
    done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "live",
                          "--detach"], env)
    assert done.returncode == 0, done.stderr
    store = open_store(pg_url)
    # No worker yet: all three wait, queued, however long the CLI took on a busy machine;
    # the worker starts once they were seen so.
    assert [s.state for s in store.run_states("live")] == ["queued"] * 3
    seen: dict[str, list[str]] = {}
    snapshots: list[set[str]] = []
    deadline = time.monotonic() + 120
    worker = CeleryWorker(env, "w1", tmp_path, concurrency=1).start(wait_ready=False)
    try:
        finished = False
        while not finished:
            finished = store.run_summary("live") is not None and \
                store.run_summary("live").status == "finished"  # then one last look
            assert time.monotonic() < deadline, seen
            states = store.run_states("live")
            snapshots.append({s.state for s in states})
            for s in states:
                trail = seen.setdefault(s.candidate_id, [])
                if not trail or trail[-1] != s.state:
                    trail.append(s.state)
            time.sleep(0.05)
    finally:
        worker.stop()
    assert set(seen) == {"s000", "s001", "s002"}
    # Never going back: each trail is queued → running → done, or (a candidate that ran
    # whole between two looks) queued → done; with one slot, the last one is seen in all
    # three states, and at one moment all three states are there.
    order = ["queued", "running", "done"]
    for cid, trail in seen.items():
        assert trail in (order, ["queued", "done"]), (cid, trail)
    assert order in seen.values(), seen
    assert {"queued", "running", "done"} in snapshots, snapshots[-20:]
    assert [s.worker.split("@")[0] for s in store.run_states("live")] == ["w1"] * 3


def test_a_store_outage_during_a_run_loses_nothing(redis_server, workers, artifacts, tmp_path):
    """PostgreSQL is down for a whole distributed run: the run completes and its run
    directory is written; the publish and the chord body each say so in one line with
    the URL redacted; once PostgreSQL is back, beat's drain task writes the run."""
    from worker.store import importer, open_store
    from worker.store.db import dispose_all

    pg = PostgresServer().start()
    try:
        url = pg.create_database("outage")
        open_store(url)  # migrated while up
        dispose_all()
        env = forge_env(redis_server.url, artifacts, FORGE_DATABASE_URL=url)
        (w,) = workers(env, n=1, concurrency=2)
        pg.stop()
        done = run_forge_cli(["run", "--candidates", str(FIXTURES / "basic"), "--run-id",
                              "outage-1", "--json", "--no-post"], env)
        assert done.returncode == 0, done.stderr
        assert (artifacts / "outage-1" / "summary.json").is_file()
        assert "run store postgresql+psycopg://forge:***@127.0.0.1" in done.stderr
        assert pg.PASSWORD not in done.stdout + done.stderr
        assert [p["run_id"] for p in importer.pending(artifacts)] == ["outage-1"]
        log = w.logtext()
        assert log.count("[outage-1] run store postgresql+psycopg://forge:***@") == 1, log
        assert pg.PASSWORD not in log

        pg.start()
        drained = call_task(redis_server, "worker.store.drain_outbox", timeout=60)
        assert drained["imported"] == ["outage-1"], drained
        assert importer.pending(artifacts) == []
        assert_store_agrees_with_run_dir(open_store(url), artifacts / "outage-1")
    finally:
        dispose_all()
        pg.remove()
