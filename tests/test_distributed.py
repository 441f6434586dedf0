"""Distributed end to end: a real redis-server, two real celery workers, the forge CLI."""

from __future__ import annotations

import json

import pytest

from tests.manifests import FIXTURES, sleepers
from tests.procs import run_forge_cli

# Every test starts processes (redis-server, celery workers, the forge CLI); tests/markers.py.
pytestmark = pytest.mark.processes


def test_two_workers_share_the_run_and_every_result_is_there_once(
        distributed_env, workers, artifacts, tmp_path):
    workers(distributed_env, n=2, concurrency=2)
    manifest = sleepers(tmp_path / "cands", 8, seconds=1.0, header="judge = \"events\"")
    done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "dist-1",
                          "--json", "--no-post"], distributed_env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "distributed" in done.stderr
    # Lifecycle lines reach the dispatcher through Celery task state, as in embedded mode.
    for line in ("[s000] [Run] Starting...", "[s000] [Run] Executing...",
                 "[s007] [Run] Exit code: 0"):
        assert line in done.stderr, line
    ids = [r["candidate_id"] for r in result["results"]]
    assert sorted(ids) == [f"s{i:03d}" for i in range(8)]
    assert all(r["success"] for r in result["results"]), result["results"]
    used = {r["worker"].split("@")[0] for r in result["results"]}
    assert used == {"w1", "w2"}, used
    summary = json.loads((artifacts / "dist-1" / "summary.json").read_text())
    assert [c["id"] for c in summary["candidates"]] == sorted(ids)
    for cid in ids:
        rec = json.loads((artifacts / "dist-1" / cid / "result.json").read_text())
        assert rec["candidate_id"] == cid and rec["exit_code"] == 0
        assert (artifacts / "dist-1" / cid / "discord_post.md").is_file()


def test_detach_returns_at_once_and_the_run_still_completes(
        distributed_env, workers, artifacts, tmp_path):
    import time

    workers(distributed_env, n=1, concurrency=2)
    done = run_forge_cli(["run", "--candidates", str(FIXTURES / "basic"), "--run-id", "det-1",
                          "--detach"], distributed_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "det-1"
    deadline = time.monotonic() + 90
    while not (artifacts / "det-1" / "summary.json").exists():
        assert time.monotonic() < deadline, "detached run never completed"
        time.sleep(0.2)
    status = run_forge_cli(["status", "det-1"], distributed_env)
    assert status.returncode == 0 and "crash" in status.stdout


def test_unreachable_broker_is_one_clear_line_and_exit_2(artifacts, tmp_path):
    from tests.procs import forge_env, free_port

    env = forge_env(f"redis://:s3cret@127.0.0.1:{free_port()}/0", artifacts)
    import time

    t0 = time.monotonic()
    done = run_forge_cli(["run", "--candidates", str(FIXTURES / "basic")], env, timeout=60)
    assert done.returncode == 2
    assert time.monotonic() - t0 < 30
    assert "cannot reach the Celery broker" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


PUBLISH_AND_COUNT = """
import json, sys
import redis
from dispatcher import dispatch, runner

client = redis.Redis.from_url(sys.argv[2])
out = {}
for n, use_ours in ((3, True), (70, True), (3, False)):
    plan = runner.prepare("subs", candidates=f"{sys.argv[1]}/m{n}/candidates.toml", post=False)
    if use_ours:
        result = dispatch.publish(plan)
    else:  # the plain Celery way, to show what is being measured
        result = dispatch.build_chord(plan).apply_async()
    key = f"{n}-{'forge' if use_ours else 'celery'}"
    out[key] = len(client.pubsub_channels("celery-task-meta-*"))
print(json.dumps(out))
"""


def test_publishing_subscribes_to_no_result_channel(distributed_env, redis_server, tmp_path):
    """The dispatcher polls the backend and never joins a task, so publishing (small runs
    and batched large ones) leaves no Redis subscription per task; plain Celery would."""
    import subprocess
    import sys

    from tests.manifests import write_manifest
    from tests.procs import ROOT

    for n in (3, 70):
        write_manifest(tmp_path / f"m{n}", {f"c{i:03d}": "print(1)\n" for i in range(n)})
    done = subprocess.run([sys.executable, "-c", PUBLISH_AND_COUNT, str(tmp_path),
                           redis_server.url], cwd=ROOT, env=distributed_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["3-forge"] == 0 and counts["70-forge"] == 0, counts
    assert counts["3-celery"] >= 3, counts  # the control: Celery's default subscribes


def test_a_stopped_worker_leaves_no_sandbox_helpers_behind(distributed_env, workers, tmp_path):
    """Each pool process makes its /etc skeleton (the default network mode's) as it
    starts, before any task, (and, for an interpreter the sandbox uid cannot reach, a
    mount view) under the sandbox directory; candidates use it and make none; a worker
    that stops cleanly removes them, though pool processes leave through os._exit."""
    import glob
    import os
    import shutil
    import tempfile
    import time

    from worker.sandbox import netns

    # The worker's own sandbox directory (a tmpfs, as by default), so helpers made by
    # any other process on this machine cannot be mistaken for this worker's.
    parent = tempfile.mkdtemp(prefix="forge-test-parent-", dir="/dev/shm")
    os.chmod(parent, 0o755)
    env = dict(distributed_env, FORGE_SANDBOX_DIR=parent)

    def helpers() -> set[str]:
        return {p for pat in ("forge-etc-*", "forge-view-*")
                for p in glob.glob(os.path.join(parent, pat))}

    assert netns.slirp4netns_path(), "slirp4netns missing: apt-get install slirp4netns"
    try:
        (w,) = workers(env, n=1, concurrency=2)
        deadline = time.monotonic() + 30
        while len(glob.glob(os.path.join(parent, "forge-etc-*"))) < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        made = helpers()
        # 2 pool processes x the default network mode (slirp4netns), before any task
        assert len([p for p in made if "forge-etc-" in p]) == 2, sorted(made)
        manifest = sleepers(tmp_path / "cands", 2, seconds=0.1)
        done = run_forge_cli(["run", "--candidates", str(manifest), "--no-post"], env)
        assert done.returncode == 0, done.stderr
        assert helpers() == made  # the candidates used them, and made none of their own
        w.stop()
        assert not helpers(), sorted(helpers())
    finally:
        shutil.rmtree(parent, ignore_errors=True)


LOUD = """import sys
print("CANDIDATE-STDOUT-5f1e " * 20)
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write("# ARTIFACT-BODY-8c2d\\n\\n" + sys.argv[1] + "\\n")
"""


def test_worker_log_at_info_carries_no_task_return_value(distributed_env, workers, artifacts,
                                                         tmp_path):
    """Celery's success line keeps its shape, with a one-line summary for the value
    (worker/tasklog.py): no candidate output, artifact or objective in the worker's log."""
    from tests.manifests import write_manifest

    (worker,) = workers(distributed_env, n=1, concurrency=2)
    manifest = write_manifest(tmp_path / "c", {"loud": LOUD, "quiet": LOUD})
    done = run_forge_cli(["run", "OBJECTIVE-TEXT-3a9b", "--candidates", str(manifest),
                          "--run-id", "logs", "--no-post"], distributed_env)
    assert done.returncode == 0, done.stderr
    run = artifacts / "logs"
    # Control: the markers are real, in the run directory where they belong.
    assert "CANDIDATE-STDOUT-5f1e" in (run / "loud" / "output.log").read_text()
    assert "ARTIFACT-BODY-8c2d" in (run / "loud" / "discord_post.md").read_text()
    log = worker.logtext()
    for marker in ("CANDIDATE-STDOUT-5f1e", "ARTIFACT-BODY-8c2d", "OBJECTIVE-TEXT-3a9b"):
        assert marker not in log, marker
    for cid in ("loud", "quiet"):
        assert (f"worker.tasks.run_candidate[logs:{cid}] succeeded in" in log
                and f"s: candidate {cid}: succeeded in " in log), log[-3000:]
    assert "worker.tasks.collect_results[logs:collect] succeeded in" in log
    assert "s: run logs: 2 candidates, winner " in log
