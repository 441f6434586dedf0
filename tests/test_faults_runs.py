"""Faults of a run as a whole: duplicate deliveries, a dispatcher that dies, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.discord_server import DiscordServer
from tests.manifests import SLEEPER, write_manifest
from tests.procs import ROOT, forge_env, run_forge_cli
from tests.test_faults import (
    FAST,
    assert_once,
    dispatch_detached,
    meta,
    popen_forge,
    run_files,
    sleepers_with,
    wait_for,
    wait_summary,
)

CANDIDATES = ROOT / "candidates"


def _in_cluster(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh process configured like the cluster (env → worker.app)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


RESEND_BODY = """
import json
from dispatcher import runs
from worker.app import app
from worker.tasks import collect_results
record = runs.load(app, "dup")
ids = list(record.task_ids.values())
results = runs.kept_results(app, ids)
assert len(results) == len(ids), results
collect_results.apply_async((results, record.run), task_id="dup:collect")
"""


def test_duplicate_delivery_changes_nothing_and_posts_once(redis_server, workers, artifacts,
                                                           tmp_path):
    with DiscordServer() as hook:
        env = forge_env(redis_server.url, artifacts, DISCORD_WEBHOOK_URL=hook.url, **FAST)
        manifest = write_manifest(tmp_path / "c", {
            "alpha": (CANDIDATES / "agent_alpha.py").read_text(),
            "gamma": (CANDIDATES / "agent_gamma.py").read_text(),
            "s00": SLEEPER.format(seconds=1),
        }, header='judge = "events"')
        done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "dup",
                              "--detach"], env)
        assert done.returncode == 0, done.stderr
        client = redis_server.client()
        published = client.lrange("celery", 0, -1)
        assert len(published) == 3
        for raw in published:  # the broker hands every candidate message out twice
            client.lpush("celery", raw)
        workers(env, n=1, concurrency=2)
        summary = wait_summary(artifacts, "dup")
        wait_for(lambda: client.llen("celery") == 0 and client.hlen("unacked") == 0, 60,
                 "every duplicate to be consumed")
        run_dir = artifacts / "dup"
        record = json.loads(wait_for(lambda: (run_dir / "discord.json").is_file() and
                                     (run_dir / "discord.json").read_text(), 30,
                                     "the Discord record"))
        assert record.get("posted"), record
        time.sleep(1.0)  # a late duplicate would have rewritten something by now
        before = run_files(run_dir)
        results = assert_once(summary, ["alpha", "gamma", "s00"])
        assert summary["winner_id"] in ("alpha", "gamma")
        assert all(r["success"] for r in results.values()), results
        # The chord body delivered again (same task id, same results): same bytes, no post.
        # (Celery never overwrites a SUCCESS meta; the message leaving the broker's
        # queue and unacked set, acks_late, says the body ran.)
        resent = _in_cluster(env, RESEND_BODY)
        assert resent.returncode == 0, resent.stderr
        for _ in range(2):
            wait_for(lambda: client.llen("celery") == 0 and client.hlen("unacked") == 0, 60,
                     "the re-sent body to run")
            time.sleep(0.5)
        assert run_files(run_dir) == before
        assert json.loads((run_dir / "summary.json").read_text()) == summary
        assert len(hook.requests) == record["messages"] >= 1, hook.requests


def test_dispatcher_killed_after_publishing_run_completes_and_status_shows_it(
        redis_server, workers, artifacts, tmp_path):
    env = forge_env(redis_server.url, artifacts, **FAST)
    workers(env, n=1, concurrency=2)
    # 4 × 4 s on 2 slots: the run outlives the kill and one `forge status` (about 1 s,
    # several under a loaded machine) with room to spare.
    manifest = sleepers_with(tmp_path / "c", 4, 4.0)
    dispatcher = popen_forge(["run", "--candidates", str(manifest), "--run-id", "orphan",
                              "--no-post"], env, tmp_path / "dispatcher.log")
    client = redis_server.client()

    def published() -> bool:
        raw = client.get("forge-run:orphan")
        return bool(raw) and json.loads(raw)["status"] == "published"

    wait_for(published, 60, "the run to be published")
    os.killpg(dispatcher.pid, signal.SIGKILL)
    dispatcher.wait(10)
    status = run_forge_cli(["status", "orphan"], env)
    assert status.returncode == 0, status.stderr
    assert "run orphan: running (" in status.stdout and "/ 4 total" in status.stdout
    results = assert_once(wait_summary(artifacts, "orphan"), ["s00", "s01", "s02", "s03"])
    assert all(r["success"] for r in results.values())
    status = run_forge_cli(["status", "orphan"], env)
    assert status.returncode == 0 and "s03" in status.stdout


PADDED = SLEEPER.format(seconds=0) + "# " + "x" * 300_000 + "\n"  # slow to publish


def test_fanout_cut_short_is_reported_and_resume_reruns_only_the_missing(
        redis_server, workers, artifacts, tmp_path):
    env = forge_env(redis_server.url, artifacts, FORGE_FANOUT_GRACE="1", **FAST)
    ids = [f"p{i:02d}" for i in range(30)]
    manifest = write_manifest(tmp_path / "c", {cid: PADDED for cid in ids})
    client = redis_server.client()
    dispatcher = popen_forge(["run", "--candidates", str(manifest), "--run-id", "cut",
                              "--detach"], env, tmp_path / "dispatcher.log")
    wait_for(lambda: client.llen("celery") >= 3 or dispatcher.poll() is not None, 60,
             "publishing to start", every=0.0005)
    os.killpg(dispatcher.pid, signal.SIGSTOP)  # freeze mid-publish, then kill
    os.killpg(dispatcher.pid, signal.SIGKILL)
    dispatcher.wait(10)
    sent = client.llen("celery")
    assert 3 <= sent < len(ids), sent
    time.sleep(1.2)  # past FORGE_FANOUT_GRACE
    status = run_forge_cli(["status", "cut"], env)
    assert status.returncode == 1, status.stdout + status.stderr
    assert (f"incomplete: fan-out cut short ({sent} of {len(ids)} candidates published"
            in status.stdout), status.stdout
    assert "forge resume cut" in status.stdout

    # The published part runs; the chord can never complete on its own.
    workers(env, n=1, concurrency=2)
    wait_for(lambda: sum((meta(client, f"cut:{c}") or {}).get("status") == "SUCCESS"
                         for c in ids) == sent, 60, "the published candidates to finish")
    sent_ids = [c for c in ids if (meta(client, f"cut:{c}") or {}).get("status") == "SUCCESS"]
    kept_started = {c: meta(client, f"cut:{c}")["result"]["started_at"] for c in sent_ids}
    assert not (artifacts / "cut").exists()

    # A changed definition is refused: the kept results would not be comparable.
    script = tmp_path / "c" / "p05.py"
    script.write_text(PADDED + "# changed\n")
    refused = run_forge_cli(["resume", "cut"], env)
    assert refused.returncode == 2
    assert "definition changed" in refused.stderr and "Traceback" not in refused.stderr
    script.write_text(PADDED)

    resumed = run_forge_cli(["resume", "cut", "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"re-running {len(ids) - sent} of {len(ids)} candidates" in resumed.stderr
    results = assert_once(json.loads(resumed.stdout), ids)
    results = assert_once(wait_summary(artifacts, "cut"), ids)
    assert all(r["success"] and r["attempt"] == 1 for r in results.values()), results
    for cid, started in kept_started.items():  # kept, not run again
        assert results[cid]["started_at"] == started
    status = run_forge_cli(["status", "cut"], env)
    assert status.returncode == 0 and "p29" in status.stdout


def test_resume_refuses_a_run_it_does_not_know(redis_server, artifacts):
    env = forge_env(redis_server.url, artifacts)
    done = run_forge_cli(["resume", "no-such-run"], env)
    assert done.returncode == 2
    assert "no record of run 'no-such-run'" in done.stderr


def test_status_of_unknown_run_still_points_to_list(redis_server, artifacts):
    done = run_forge_cli(["status", "nope"], forge_env(redis_server.url, artifacts))
    assert done.returncode == 2 and "forge list" in done.stderr


def test_resume_after_a_killed_worker_and_a_purged_queue_says_what_was_lost(
        redis_server, workers, artifacts, tmp_path):
    """Issue 18: the only worker SIGKILLed mid-run, then the queue purged. One candidate
    is still in the unacked hash (its worker is dead: the queue cannot tell), two are
    gone. resume and status must say so, not "nothing was lost" / "2 queued"."""
    env = forge_env(redis_server.url, artifacts, **FAST)
    client = redis_server.client()
    ids = ["s00", "s01", "s02"]
    dispatch_detached("purged", sleepers_with(tmp_path / "c", 3, 3.0), env)
    # Before any worker: all queued, nothing lost, and that is what it says.
    waiting = run_forge_cli(["resume", "purged"], env)
    assert waiting.returncode == 2, waiting.stdout + waiting.stderr
    said = " ".join(waiting.stderr.split())
    assert "is still in progress and no candidate is lost: 3 queued." in said, said
    assert "--force publishes all 3 unfinished candidate(s) again now" in said

    (w1,) = workers(env, n=1, concurrency=1)

    def executing() -> str | None:
        for cid in ids:
            m = meta(client, f"purged:{cid}")
            if m and m["status"] == "PROGRESS" and "[Run] Executing..." in m["result"]["log"]:
                return cid
        return None

    running = wait_for(executing, 60, "a candidate to run")
    os.killpg(w1.proc.pid, signal.SIGKILL)
    w1.proc.wait(10)
    purge = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "purge", "-f"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert purge.returncode == 0, purge.stderr
    assert client.llen("celery") == 0 and client.hlen("unacked") == 1
    lost = [c for c in ids if c != running]

    refused = run_forge_cli(["resume", "purged"], env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())
    assert "nothing was lost" not in said and "no candidate is lost" not in said, said
    assert f"2 candidate(s) lost, neither queued nor running ({', '.join(lost)};" in said
    assert f"1 delivered to a worker and not yet acknowledged ({running})" in said
    assert "the queue cannot tell which" in said
    assert "--force publishes all 3 unfinished candidate(s) again now" in said
    status = run_forge_cli(["status", "purged"], env)
    assert status.returncode == 1, status.stdout + status.stderr
    line = " ".join(status.stdout.split())
    assert "(0 done / 3 total; 1 running, 0 queued; 0 failed)" in line, line
    assert f"2 lost, neither queued nor running ({', '.join(lost)})" in line
    assert "forge resume purged" in line

    # --force does what it said: all three again, and the run completes, each once.
    workers(env, n=1, concurrency=2, prefix="v")
    forced = run_forge_cli(["resume", "purged", "--force", "--json"], env)
    assert forced.returncode == 0, forced.stderr
    assert "re-running 3 of 3 candidates" in forced.stderr
    results = assert_once(wait_summary(artifacts, "purged"), ids)
    assert all(r["success"] for r in results.values()), results
