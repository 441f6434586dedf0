"""Faults on real processes: killed pool processes, killed worker nodes, shutdowns.

Every test runs a real redis-server and real ``celery -A worker worker`` processes,
kills them with real signals, and asserts on the run directory: every candidate present
exactly once, with the outcome the fault should leave. The helpers here are shared by
the other ``test_faults_*`` files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.manifests import SLEEPER, write_manifest
from tests.procs import ROOT, CeleryWorker, forge_env, run_forge_cli

# Short everything: candidates sleep 1-3 s, so a 5 s visibility timeout never
# redelivers a healthy task, yet a dead node's tasks come back within seconds.
FAST = {"FORGE_VISIBILITY_TIMEOUT": "5", "FORGE_MAX_DEADLINE": "3"}


def wait_for(pred: Callable[[], object], timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(every)


def meta(client, task_id: str) -> dict | None:
    raw = client.get(f"celery-task-meta-{task_id}")
    return json.loads(raw) if raw else None


def summary_of(artifacts: Path, run_id: str) -> dict | None:
    path = artifacts / run_id / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def wait_summary(artifacts: Path, run_id: str, timeout: float = 90) -> dict:
    return wait_for(lambda: summary_of(artifacts, run_id), timeout, f"run {run_id} to finish",
                    every=0.2)


def run_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_once(summary: dict, ids: list[str]) -> dict[str, dict]:
    """Every candidate exactly once, in summary.json's candidates, scores and results."""
    for part, key in (("candidates", "id"), ("scores", "candidate_id"),
                      ("results", "candidate_id")):
        got = [item[key] for item in summary[part]]
        assert sorted(got) == sorted(ids), f"{part}: {got}"
    return {r["candidate_id"]: r for r in summary["results"]}


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, cmdline) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry)] = (ppid, cmd)
    return table


def descendants(pid: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    table = table or _proc_table()
    kids: dict[int, list[int]] = {}
    for p, (pp, _) in table.items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def pool_child_running(worker: CeleryWorker, script: str) -> int | None:
    """The prefork child whose sandbox runs ``script`` (seen in its descendants' argv)."""
    table = _proc_table()
    for child in worker.child_pids():
        if any(script in table.get(d, (0, ""))[1] for d in descendants(child, table)):
            return child
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def dispatch_detached(run_id: str, manifest: Path, env: dict[str, str], *extra: str) -> None:
    done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", run_id,
                          "--detach", "--no-post", *extra], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == run_id


def popen_forge(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - closed by the process's end
    return subprocess.Popen([sys.executable, "-m", "dispatcher.cli", *args], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


MARKED = """import os, sys, time
if len(sys.argv) == 3:  # re-exec with a marker in argv, so a test can find this process
    os.execv(sys.executable, [sys.executable, *sys.argv, "fault-mark-{mark}"])
time.sleep({seconds})
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write("# Done\\n")
"""


def marked(mark: str, seconds: float) -> str:
    """A sleeper whose sandboxed process shows ``fault-mark-<mark>`` in its argv."""
    return MARKED.format(mark=mark, seconds=seconds)


def sleepers_with(directory: Path, n: int, seconds: float, **special: str) -> Path:
    scripts = {f"s{i:02d}": SLEEPER.format(seconds=seconds) for i in range(n)}
    scripts.update(special)
    return write_manifest(directory, scripts)


# --- a pool process dies mid-candidate ----------------------------------------------


def test_killed_pool_process_reruns_its_candidate_once(redis_server, workers, artifacts,
                                                       tmp_path):
    env = forge_env(redis_server.url, artifacts, **FAST)
    (w1,) = workers(env, n=1, concurrency=2)
    manifest = sleepers_with(tmp_path / "c", 3, 1.0, victim=marked("victim", 2))
    dispatch_detached("kill-child", manifest, env)
    child = wait_for(lambda: pool_child_running(w1, "fault-mark-victim"), 60, "victim to start")
    os.kill(child, signal.SIGKILL)  # what the OOM killer does
    summary = wait_summary(artifacts, "kill-child")
    results = assert_once(summary, ["s00", "s01", "s02", "victim"])
    assert all(r["success"] for r in results.values()), results
    assert results["victim"]["attempt"] == 2  # re-run after the lost attempt
    assert all(results[c]["attempt"] == 1 for c in ("s00", "s01", "s02"))
    assert json.loads((artifacts / "kill-child" / "victim" / "result.json").read_text())[
        "exit_code"] == 0


def test_candidate_that_kills_its_worker_every_time_fails_after_the_retry_limit(
        redis_server, workers, artifacts, tmp_path):
    env = forge_env(redis_server.url, artifacts, FORGE_MAX_ATTEMPTS="2", **FAST)
    (w1,) = workers(env, n=1, concurrency=2)
    manifest = sleepers_with(tmp_path / "c", 2, 1.0, killer=marked("killer", 3))
    dispatch_detached("kill-always", manifest, env)
    killed: list[int] = []
    deadline = time.monotonic() + 120
    while summary_of(artifacts, "kill-always") is None:
        assert time.monotonic() < deadline, "run never finished"
        child = pool_child_running(w1, "fault-mark-killer")
        if child is not None and child not in killed:
            os.kill(child, signal.SIGKILL)
            killed.append(child)
        time.sleep(0.05)
    assert len(killed) == 2  # attempts 1 and 2; attempt 3 is refused without running
    results = assert_once(summary_of(artifacts, "kill-always"), ["s00", "s01", "killer"])
    assert results["s00"]["success"] and results["s01"]["success"]
    killer = results["killer"]
    assert not killer["success"] and killer["attempt"] == 3
    assert "retry limit 2" in killer["error_message"]
    assert "killing its worker" in killer["error_message"]


# --- a whole worker node dies ---------------------------------------------------------


def test_killed_worker_node_tasks_are_redelivered_to_the_survivor(redis_server, workers,
                                                                  artifacts, tmp_path):
    env = forge_env(redis_server.url, artifacts, **FAST)
    w1, w2 = workers(env, n=2, concurrency=1)
    manifest = sleepers_with(tmp_path / "c", 4, 2.0)
    client = redis_server.client()
    dispatch_detached("kill-node", manifest, env)

    def on_w1() -> str | None:
        for cid in ("s00", "s01", "s02", "s03"):
            m = meta(client, f"kill-node:{cid}")
            if m and m["status"] == "PROGRESS" and m["result"]["worker"].startswith("w1@"):
                return cid if "[Run] Executing..." in m["result"]["log"] else None
        return None

    lost = wait_for(on_w1, 60, "w1 to run a candidate")
    tree = descendants(w1.proc.pid)
    assert tree, "w1 has no pool processes"
    os.killpg(w1.proc.pid, signal.SIGKILL)  # the node and all it started
    w1.proc.wait(10)
    # The local sandboxes (bwrap --die-with-parent, own session) die with the tree.
    table = _proc_table()
    try:
        wait_for(lambda: not any(alive(p) for p in tree), 10, "w1's sandboxes to die")
    except AssertionError:
        raise AssertionError([table.get(p) for p in tree if alive(p)]) from None
    summary = wait_summary(artifacts, "kill-node", timeout=120)
    results = assert_once(summary, ["s00", "s01", "s02", "s03"])
    assert all(r["success"] for r in results.values()), results
    assert results[lost]["worker"].startswith("w2@")
    assert results[lost]["attempt"] == 2
    w2.stop()


# --- shutdowns --------------------------------------------------------------------------


def test_warm_shutdown_lets_running_candidates_finish(redis_server, workers, artifacts,
                                                      tmp_path):
    env = forge_env(redis_server.url, artifacts, **FAST)
    (w1,) = workers(env, n=1, concurrency=2)
    # 6 s each: both are seen running at once even when a loaded machine starts the
    # second sandbox seconds after the first.
    manifest = sleepers_with(tmp_path / "c", 2, 6.0)
    client = redis_server.client()
    dispatch_detached("warm", manifest, env)
    wait_for(lambda: all((meta(client, f"warm:{c}") or {}).get("status") == "PROGRESS"
                         for c in ("s00", "s01")), 60, "both candidates to run")
    os.kill(w1.proc.pid, signal.SIGTERM)  # warm shutdown: finish what runs, take no more
    assert w1.proc.wait(60) == 0
    for cid in ("s00", "s01"):
        m = meta(client, f"warm:{cid}")
        assert m["status"] == "SUCCESS" and m["result"]["success"], m
    # The chord body was queued while w1 shut down; the next worker runs it.
    workers(env, n=1, concurrency=1, prefix="late")
    results = assert_once(wait_summary(artifacts, "warm"), ["s00", "s01"])
    assert all(r["success"] and r["attempt"] == 1 and r["worker"].startswith("w1@")
               for r in results.values()), results


def test_sigterm_remapped_to_soft_shutdown_requeues_unfinished_candidates(
        redis_server, workers, artifacts, tmp_path):
    # Container setting: REMAP_SIGTERM=SIGQUIT makes SIGTERM a soft shutdown of
    # FORGE_SOFT_SHUTDOWN_TIMEOUT seconds, then a cold one that requeues the rest.
    env = forge_env(redis_server.url, artifacts, REMAP_SIGTERM="SIGQUIT",
                    FORGE_SOFT_SHUTDOWN_TIMEOUT="1", **FAST)
    (w1,) = workers(env, n=1, concurrency=2)
    manifest = sleepers_with(tmp_path / "c", 2, 3.0)
    client = redis_server.client()
    dispatch_detached("soft", manifest, env)
    wait_for(lambda: all((meta(client, f"soft:{c}") or {}).get("status") == "PROGRESS"
                         for c in ("s00", "s01")), 60, "both candidates to run")
    os.kill(w1.proc.pid, signal.SIGTERM)
    w1.proc.wait(30)
    for cid in ("s00", "s01"):  # cut off, not failed: no result stored
        assert (meta(client, f"soft:{cid}") or {}).get("status") != "SUCCESS"
    workers(env, n=1, concurrency=2, prefix="next")
    results = assert_once(wait_summary(artifacts, "soft", timeout=60), ["s00", "s01"])
    assert all(r["success"] and r["worker"].startswith("next1@") for r in results.values())
