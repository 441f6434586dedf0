"""Daytona mode end to end: whole competitions through the chord, the real ``daytona`` SDK
against the loopback emulator, real Celery (embedded in-process, and distributed with
redis-server and ``celery worker -P threads`` processes).

What a user relies on: each candidate in its own sandbox, the same outcome as local mode,
no sandbox left alive (the summary says how many), the objective byte for byte, faults
turned into clear results, orphans reaped after a worker is killed, the key nowhere.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import worker.sandbox
from dispatcher.runner import run_forge
from tests.daytona_emulator import DaytonaEmulator
from tests.manifests import FIXTURES, write_manifest
from tests.procs import ROOT, CeleryWorker, RedisServer, forge_env, run_forge_cli
from worker.records import ForgeResult
from worker.sandbox.daytona import RUN_LABEL, DaytonaBackend

# Every test starts processes (sandboxes, redis-server, workers); tests/markers.py.
pytestmark = pytest.mark.processes

API_KEY = f"test-key-{secrets.token_hex(16)}"
DEMO = ROOT / "candidates" / "candidates.toml"
DEMO_IDS = ["alpha", "beta", "gamma", "delta", "epsilon"]
HOSTILE = "'; rm -rf \"$HOME\" $(touch /tmp/pwned) \n ünïcødé"
ECHO = (FIXTURES / "basic" / "echo.py").read_text(encoding="utf-8")
SLEEP = """import sys, time
time.sleep({seconds})
open(sys.argv[2], "w").write("# slept\\n\\n" + sys.argv[1])
"""
SDK_ENV = {"DAYTONA_USE_DEPRECATED_POLLING": "true", "NO_PROXY": "127.0.0.1,localhost"}


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu() -> Iterator[DaytonaEmulator]:
    with DaytonaEmulator(api_key=API_KEY) as emulator:
        yield emulator


@pytest.fixture
def daytona_env(emu, monkeypatch) -> DaytonaEmulator:
    """Embedded mode against the emulator: the key in os.environ, a fresh backend."""
    monkeypatch.setenv("DAYTONA_API_KEY", API_KEY)
    monkeypatch.setenv("DAYTONA_API_URL", emu.url)
    for name, value in SDK_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(worker.sandbox, "_backends", {})  # no client bound to old env
    return emu


@pytest.fixture(scope="module")
def local_demo(tmp_path_factory) -> ForgeResult:
    """The demo competition in local mode: what Daytona mode must agree with."""
    assert "DAYTONA_API_KEY" not in os.environ
    out = tmp_path_factory.mktemp("local-demo")
    result = run_forge(candidates=str(DEMO), artifacts_dir=str(out), run_id="local-demo",
                       post=False)
    assert result.execution_mode == "local"
    return result


class Cluster:
    def __init__(self, redis: RedisServer, worker_proc: CeleryWorker, env: dict[str, str],
                 artifacts: Path):
        self.redis, self.worker, self.env, self.artifacts = redis, worker_proc, env, artifacts


def start_cluster(base: Path, emu: DaytonaEmulator, concurrency: int = 16,
                  name: str = "dt") -> Cluster:
    artifacts = base / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(base / "redis").start()
    env = forge_env(redis.url, artifacts, DAYTONA_API_KEY=API_KEY, DAYTONA_API_URL=emu.url,
                    FORGE_MAX_DEADLINE="120", **SDK_ENV)
    proc = CeleryWorker(env, name, base, concurrency=concurrency, pool="threads")
    try:
        proc.start()
    except Exception:
        redis.stop()
        raise
    return Cluster(redis, proc, env, artifacts)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, emu) -> Iterator[Cluster]:
    """redis-server + one ``celery worker -P threads -c 16`` with the Daytona env."""
    c = start_cluster(tmp_path_factory.mktemp("cluster"), emu)
    yield c
    c.worker.stop()
    c.redis.stop()


# -- helpers ----------------------------------------------------------------------------


def assert_key_nowhere(*texts: str, dirs: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert API_KEY not in text
    for d in dirs:
        for path in Path(d).rglob("*"):
            if path.is_file():
                assert API_KEY.encode() not in path.read_bytes(), path


def creates_for(emu: DaytonaEmulator, run_id: str) -> list[dict]:
    return [c for c in emu.calls if c["path"] == "create" and c["status"] == 200
            and (c.get("labels") or {}).get(RUN_LABEL) == run_id]


def alive_for(emu: DaytonaEmulator, run_id: str) -> list[str]:
    with emu.lock:
        return [s.id for s in emu.sandboxes.values()
                if s.state != "destroyed" and s.labels.get(RUN_LABEL) == run_id]


def assert_each_in_its_own_sandbox(emu: DaytonaEmulator, result: ForgeResult) -> None:
    ids = [r.sandbox_id for r in result.results]
    assert all(ids) and len(set(ids)) == len(ids), ids
    created = creates_for(emu, result.run_id)
    assert len(created) == len(result.results)
    assert {c["sandbox"] for c in created} == set(ids)
    assert all(r.execution_mode == "daytona" for r in result.results)


def assert_same_outcome_as_local(result: ForgeResult, local: ForgeResult) -> None:
    assert {r.candidate_id: r.success for r in result.results} == {
        r.candidate_id: r.success for r in local.results}
    assert {s.candidate_id: s.qualified for s in result.scores} == {
        s.candidate_id: s.qualified for s in local.scores}
    assert result.winner_id == local.winner_id
    ranking = [s.candidate_id for s in sorted(result.scores, key=lambda s: s.rank)]
    assert ranking == [s.candidate_id for s in sorted(local.scores, key=lambda s: s.rank)]


def summary_of(root: Path, run_id: str) -> dict:
    return json.loads((root / run_id / "summary.json").read_text(encoding="utf-8"))


def echo_manifest(directory: Path, n: int = 1, header: str = "timeout = 20") -> Path:
    return write_manifest(directory, {f"echo-{i + 1}": ECHO for i in range(n)}, header)


def cli(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    done = run_forge_cli(args, env, **kw)
    assert_key_nowhere(done.stdout, done.stderr)
    return done


# -- the demo competition -----------------------------------------------------------------


def test_demo_competition_embedded_in_daytona_matches_local(daytona_env, local_demo,
                                                            tmp_path):
    emu = daytona_env
    lines: list[tuple[str, str]] = []
    result = run_forge(use_daytona=True, candidates=str(DEMO), artifacts_dir=str(tmp_path),
                       run_id="dt-demo-emb", post=False,
                       log_callback=lambda cid, msg: lines.append((cid, msg)))

    assert result.execution_mode == "daytona"
    assert [r.candidate_id for r in result.results] == DEMO_IDS
    assert_each_in_its_own_sandbox(emu, result)
    assert_same_outcome_as_local(result, local_demo)
    assert result.sandboxes_alive == 0 and alive_for(emu, "dt-demo-emb") == []
    assert summary_of(tmp_path, "dt-demo-emb")["sandboxes_alive"] == 0
    assert {cid for cid, msg in lines if msg == "[Daytona] Creating sandbox..."} == set(DEMO_IDS)
    assert_key_nowhere(json.dumps(result.to_dict()), repr(lines), dirs=(tmp_path,))


def test_demo_competition_distributed_in_daytona_matches_local(cluster, emu, local_demo):
    done = cli(["run", "--daytona", "--candidates", str(DEMO), "--run-id", "dt-demo-dist",
                "--json", "--no-post"], cluster.env)
    assert done.returncode == 0, done.stderr
    assert "distributed" in done.stderr and "Execution: DAYTONA" in done.stderr
    result = ForgeResult.from_dict(json.loads(done.stdout))

    assert result.execution_mode == "daytona"
    assert_each_in_its_own_sandbox(emu, result)
    assert all(r.worker.startswith("dt@") for r in result.results)
    assert_same_outcome_as_local(result, local_demo)
    assert result.sandboxes_alive == 0 and alive_for(emu, "dt-demo-dist") == []
    assert summary_of(cluster.artifacts, "dt-demo-dist")["sandboxes_alive"] == 0
    assert_key_nowhere(cluster.worker.logtext(), dirs=(cluster.artifacts,))


# -- the objective, byte for byte ---------------------------------------------------------


def _no_pwned() -> None:
    if os.path.lexists("/tmp/pwned"):
        os.remove("/tmp/pwned")


def _check_echoed(emu: DaytonaEmulator, result: ForgeResult, root: Path) -> None:
    (echoed,) = result.results
    assert echoed.success, echoed.error_message
    assert echoed.artifact_content == HOSTILE
    post = root / result.run_id / echoed.candidate_id / "discord_post.md"
    assert post.read_bytes() == HOSTILE.encode("utf-8")
    (execute,) = [c for c in emu.calls if c["path"] == "execute"
                  and c["sandbox"] == echoed.sandbox_id]
    assert shlex.split(execute["command"])[2] == HOSTILE  # what the sandbox shell was given
    assert not os.path.lexists("/tmp/pwned")


def test_hostile_objective_reaches_the_script_byte_for_byte_embedded(daytona_env, tmp_path):
    _no_pwned()
    manifest = echo_manifest(tmp_path / "cands")
    result = run_forge(HOSTILE, use_daytona=True, candidates=str(manifest),
                       artifacts_dir=str(tmp_path / "out"), post=False)
    assert result.objective == HOSTILE and result.execution_mode == "daytona"
    _check_echoed(daytona_env, result, tmp_path / "out")


def test_hostile_objective_reaches_the_script_byte_for_byte_distributed(cluster, emu,
                                                                         tmp_path):
    _no_pwned()
    manifest = echo_manifest(tmp_path / "cands")
    done = cli(["run", "--daytona", "--candidates", str(manifest), "--run-id", "dt-hostile",
                "--json", "--no-post", "-o", HOSTILE], cluster.env)
    assert done.returncode == 0, done.stderr
    result = ForgeResult.from_dict(json.loads(done.stdout))
    assert result.objective == HOSTILE
    _check_echoed(emu, result, cluster.artifacts)
    assert result.sandboxes_alive == 0


# -- faults, each in a full run -----------------------------------------------------------

def _all_ok(result: ForgeResult, lines: list[str]) -> None:
    assert all(r.success for r in result.results), [r.error_message for r in result.results]


def _one_failed(starts: str, contains: str = ""):
    def check(result: ForgeResult, lines: list[str]) -> None:
        failed = [r for r in result.results if not r.success]
        assert len(failed) == 1, [r.error_message for r in result.results]
        assert failed[0].error_message.startswith(starts), failed[0].error_message
        assert contains in failed[0].error_message
        assert sum(r.success for r in result.results) == len(result.results) - 1
    return check


def _retried(line: str, times: int):
    def check(result: ForgeResult, lines: list[str]) -> None:
        _all_ok(result, lines)
        assert sum(x.startswith(line) for x in lines) == times, lines
    return check


def _all_failed(starts: str, contains: str = "", timed_out: bool = False):
    def check(result: ForgeResult, lines: list[str]) -> None:
        for r in result.results:
            assert not r.success and r.error_message.startswith(starts), r.error_message
            assert contains in r.error_message and r.timed_out is timed_out
        assert result.winner_id is None
    return check


def _cleanup_warned(result: ForgeResult, lines: list[str]) -> None:
    _all_ok(result, lines)
    assert result.sandboxes_alive == len(result.results)  # the summary says so
    for r in result.results:
        assert r.warnings and r.warnings[0].startswith(f"Cleanup failed for sandbox "
                                                       f"{r.sandbox_id}")
        assert "forge reap" in r.warnings[0]


def _uncounted(result: ForgeResult, lines: list[str]) -> None:
    _all_ok(result, lines)
    assert result.sandboxes_alive is None
    assert any(n.startswith("Could not count the run's live Daytona sandboxes")
               for n in result.notes), result.notes


FAULTS = {
    "rate-limited-429": ({"rate_limit_creates": 2}, ECHO,
                         _retried("[Daytona] Rate limited (429); retrying in ", 2)),
    "unavailable-503": ({"unavailable_creates": 2}, ECHO,
                        _retried("[Daytona] Service unavailable (503); retrying in ", 2)),
    "create-500": ({"fail_creates": 1}, ECHO,
                   _one_failed("Sandbox creation failed: ", "Runner exploded")),
    "never-starts": ({"never_start": 1}, ECHO,
                     _one_failed("Sandbox creation failed: not started within 2s",
                                 "deleted)")),
    "error-state": ({"error_start": 1}, ECHO,
                    _one_failed("Sandbox creation failed: ", "(1 stray sandbox(es) deleted)")),
    "create-answer-lost": ({"create_latency": 3.0}, ECHO,
                           _all_failed("Sandbox creation failed: ",
                                       "1 stray sandbox(es) deleted")),
    "delete-500-once": ({"fail_deletes": 2}, ECHO, _all_ok),
    "exec-killed-by-daemon": ({"exec_timeout_cap": 1}, SLEEP.format(seconds=30),
                              _all_failed("Execution timed out after 20s (sandbox killed)",
                                          timed_out=True)),
    "slow-daemon": ({"exec_delay": 0.5, "start_delay": 0.3}, ECHO, _all_ok),
    "list-fails-at-the-end": ({"fail_lists": -1}, ECHO, _uncounted),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_in_a_full_run_gives_its_documented_result(daytona_env, tmp_path, fault):
    emu = daytona_env
    faults, script, check = FAULTS[fault]
    # The process's backend, with a short create deadline so "never starts" is quick.
    worker.sandbox._backends["daytona"] = DaytonaBackend(create_timeout=2, backoff_base=0.05)
    manifest = write_manifest(tmp_path / "cands", {f"c{i}": script for i in range(3)},
                              "timeout = 20")
    emu.set_faults(**faults)
    lines: list[str] = []
    result = run_forge(f"fault {fault}", use_daytona=True, candidates=str(manifest),
                       artifacts_dir=str(tmp_path / "out"), run_id=f"fault-{fault}",
                       post=False, log_callback=lambda cid, msg: lines.append(msg))
    emu.reset_faults()

    assert (tmp_path / "out" / result.run_id / "summary.json").is_file()  # the run completed
    assert len(result.results) == 3
    check(result, lines)
    assert alive_for(emu, result.run_id) == []
    if fault != "list-fails-at-the-end":
        assert result.sandboxes_alive == 0
    assert_key_nowhere(json.dumps(result.to_dict()), repr(lines), dirs=(tmp_path,))


def test_wrong_key_fails_every_candidate_and_the_run_still_completes(daytona_env, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("DAYTONA_API_KEY", "test-key-wrong-one")
    manifest = echo_manifest(tmp_path / "cands", n=2)
    result = run_forge("wrong key", use_daytona=True, candidates=str(manifest),
                       artifacts_dir=str(tmp_path / "out"), post=False)
    assert result.execution_mode == "daytona" and result.winner_id is None
    for r in result.results:
        assert r.error_message.startswith("Sandbox creation failed"), r.error_message
        assert "test-key-wrong-one" not in r.error_message
    assert result.sandboxes_alive is None  # counting failed too: recorded, not raised
    assert any(n.startswith("Could not count") for n in result.notes)
    assert (tmp_path / "out" / result.run_id / "summary.json").is_file()


def test_undeletable_sandboxes_are_counted_then_reaped_by_the_beat_task(cluster, emu,
                                                                         tmp_path):
    manifest = echo_manifest(tmp_path / "cands", n=3)
    emu.set_faults(fail_deletes=-1)
    done = cli(["run", "--daytona", "--candidates", str(manifest), "--run-id", "dt-undeleted",
                "--json", "--no-post", "-o", "undeletable"], cluster.env)
    emu.reset_faults()
    assert done.returncode == 0, done.stderr
    result = ForgeResult.from_dict(json.loads(done.stdout))
    _cleanup_warned(result, [])
    assert sorted(alive_for(emu, "dt-undeleted")) == sorted(r.sandbox_id for r in result.results)

    # The periodic task, run by the real worker as beat would send it.
    code = ("import json; from worker.app import app; r = app.send_task("
            "'worker.maintenance.reap_sandboxes', kwargs={'max_age_seconds': 0}); "
            "print(json.dumps(r.get(timeout=60)))")
    sent = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cluster.env,
                          capture_output=True, text=True, timeout=90)
    assert sent.returncode == 0, sent.stderr
    assert_key_nowhere(sent.stdout, sent.stderr)
    report = json.loads(sent.stdout)
    reaped = {e["id"] for e in report["sandboxes"] if e["run_id"] == "dt-undeleted"}
    assert reaped == {r.sandbox_id for r in result.results}
    assert report["deleted"] == report["listed"] and report["failed"] == 0
    assert alive_for(emu, "dt-undeleted") == []
    assert_key_nowhere(cluster.worker.logtext(), dirs=(cluster.artifacts,))


# -- the reaper after a killed worker -------------------------------------------------------


def test_reap_deletes_what_a_killed_worker_left(emu, tmp_path):
    c = start_cluster(tmp_path / "kill", emu, concurrency=8, name="doomed")
    try:
        manifest = write_manifest(tmp_path / "cands", {f"z{i}": SLEEP.format(seconds=20)
                                                       for i in range(3)}, "timeout = 60")
        done = cli(["run", "--daytona", "--candidates", str(manifest), "--run-id", "dt-killed",
                    "--detach"], c.env)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 60
        while True:  # every candidate's process is running in its sandbox
            with emu.lock:
                ours = [s for s in emu.sandboxes.values()
                        if s.labels.get(RUN_LABEL) == "dt-killed" and s.state != "destroyed"]
                running = len(ours) == 3 and all(s.procs for s in ours)
            if running:
                break
            assert time.monotonic() < deadline, c.worker.logtext()[-3000:]
            time.sleep(0.1)
        pids = [c.worker.proc.pid, *c.worker.child_pids()]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        c.worker.proc.wait(10)
        time.sleep(0.5)
        orphans = sorted(s.id for s in ours)
        assert sorted(alive_for(emu, "dt-killed")) == orphans  # nobody deleted them

        young = cli(["reap", "--dry-run"], c.env)  # default age: they may still be running
        assert young.returncode == 0, young.stderr
        assert "No orphaned Daytona sandboxes" in young.stdout

        listed = cli(["reap", "--max-age", "0", "--dry-run", "--json"], c.env)
        assert listed.returncode == 0, listed.stderr
        entries = [e for e in json.loads(listed.stdout) if e["run_id"] == "dt-killed"]
        assert sorted(e["id"] for e in entries) == orphans
        assert not any(e["deleted"] for e in entries)
        assert sorted(alive_for(emu, "dt-killed")) == orphans  # dry run deleted nothing

        table = cli(["reap", "--max-age", "0", "--dry-run"], c.env)
        assert "would delete" in table.stdout and "dt-killed" in table.stdout

        reaped = cli(["reap", "--max-age", "0"], c.env)
        assert reaped.returncode == 0, reaped.stderr
        assert "deleted" in reaped.stdout and "dt-killed" in reaped.stdout
        assert alive_for(emu, "dt-killed") == []
        assert set(orphans) <= set(emu.deleted)
        with emu.lock:
            assert not any(emu.sandboxes[i].procs for i in orphans)  # processes gone too

        again = cli(["reap", "--max-age", "0", "--json"], c.env)
        assert [e for e in json.loads(again.stdout) if e["run_id"] == "dt-killed"] == []
        assert_key_nowhere(c.worker.logtext(), dirs=(c.artifacts,))
    finally:
        c.worker.stop()
        c.redis.stop()


def test_reap_without_daytona_is_a_clear_error(tmp_path):
    done = run_forge_cli(["reap", "--dry-run"], forge_env(None, tmp_path))
    assert done.returncode == 2
    assert "Daytona not configured" in done.stderr and "DAYTONA_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr


# -- fallback and the seed's API ------------------------------------------------------------


def test_daytona_without_a_key_falls_back_to_local_and_says_so(tmp_path):
    env = forge_env(None, tmp_path / "out")
    done = run_forge_cli(["run", "--daytona", "--candidates", str(FIXTURES / "basic"),
                          "--no-post", "--run-id", "fallback"], env)
    assert done.returncode == 0, done.stderr
    assert "(Daytona not configured, falling back to local)" in done.stdout
    assert "Execution: LOCAL" in done.stdout
    summary = summary_of(tmp_path / "out", "fallback")
    assert summary["execution_mode"] == "local" and summary["sandboxes_alive"] is None
    assert "(Daytona not configured, falling back to local)" in summary["notes"]


def test_run_all_candidates_in_daytona_keeps_the_seed_api(daytona_env, tmp_path):
    from dispatcher.daytona_compat import run_all_candidates_in_daytona
    from dispatcher.manifest import load_manifest

    emu = daytona_env
    sleepy = tmp_path / "sleepy.py"
    sleepy.write_text(SLEEP.format(seconds=1.5))
    gamma = next(c for c in load_manifest(DEMO).candidates if c.id == "gamma")
    candidates = [
        {"id": "s1", "name": "Sleepy One", "script": str(sleepy)},
        gamma,  # a dispatcher.manifest.Candidate
        {"id": "s2", "script": str(sleepy)},
        {"id": "delta", "name": "Agent Delta", "script": "candidates/agent_delta.py"},
    ]
    seen: list[tuple[str, str]] = []
    results = run_all_candidates_in_daytona(candidates, "seed objective", str(tmp_path / "out"),
                                            lambda cid, msg: seen.append((cid, msg)))

    assert [r.candidate_id for r in results] == ["s1", "gamma", "s2", "delta"]
    assert [r.success for r in results] == [True, True, True, False]
    assert all(r.execution_mode == "daytona" for r in results)
    assert len({r.sandbox_id for r in results}) == 4
    run_id = next(c["labels"][RUN_LABEL] for c in emu.calls if c["path"] == "create"
                  and c.get("sandbox") == results[0].sandbox_id)
    assert alive_for(emu, run_id) == []
    assert summary_of(tmp_path / "out", run_id)["sandboxes_alive"] == 0
    # Through the chord, so in parallel: both sleepers were running at the same time.
    s1, s2 = results[0], results[2]
    assert max(s1.started_at, s2.started_at) < min(s1.finished_at, s2.finished_at)
    assert {cid for cid, _ in seen} == {"s1", "gamma", "s2", "delta"}


def test_importing_worker_stays_light():
    """``import worker`` loads neither the SDK, the judge nor any of the dispatcher; the
    seed-compatible API loads the dispatcher but still not the SDK nor the judge."""
    code = ("import sys, worker, worker.maintenance; "
            "heavy = [m for m in ('daytona', 'dispatcher', 'worker.judge') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "import dispatcher.daytona_compat; assert 'dispatcher.runner' in sys.modules; "
            "heavy = [m for m in ('daytona', 'worker.judge') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
