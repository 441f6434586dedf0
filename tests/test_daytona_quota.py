"""Daytona at account scale: the sandbox budget, the account's refusals, snapshots built
from declared images, resources, network allow-lists, stuck and stopped sandboxes.

The real ``daytona`` SDK against the emulator (a fresh one per test, so its peak count of
live sandboxes is the test's own); real redis-server and ``celery worker -P threads``
processes, or the embedded worker. What a user relies on: every candidate runs however
small the account, never more sandboxes alive than the budget, nothing left behind, a
wait that shows (log, Flower) and ends with a message naming the quota and the fixes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
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
from tests.manifests import write_manifest
from tests.procs import (
    ROOT,
    CeleryWorker,
    RedisServer,
    forge_env,
    free_port,
    run_forge_cli,
    stop_process,
)
from worker.budget import RedisBudget, leases_key, waiter_run_key
from worker.records import ForgeResult
from worker.sandbox.daytona import RUN_LABEL, DaytonaBackend

# Every test starts processes (redis-server, celery workers, emulator processes); tests/markers.py.
pytestmark = pytest.mark.processes

API_KEY = f"test-key-{secrets.token_hex(16)}"
SDK_ENV = {"DAYTONA_USE_DEPRECATED_POLLING": "true", "NO_PROXY": "127.0.0.1,localhost"}
SLEEP = """import sys, time
time.sleep({seconds})
open(sys.argv[2], "w").write("# slept\\n\\n" + sys.argv[1])
"""
WAITING = "[Daytona] waiting for a sandbox slot"
LEARNED = "[Daytona] The account refused a sandbox while"
FIX_WORDS = ("quota", "FORGE_DAYTONA_SLOT_WAIT", "forge reap", "lower the budget",
             "raise the Daytona account's tier")


@pytest.fixture
def emu() -> Iterator[DaytonaEmulator]:
    with DaytonaEmulator(api_key=API_KEY) as emulator:
        yield emulator


@pytest.fixture
def embedded(emu, monkeypatch) -> DaytonaEmulator:
    """Embedded mode against the emulator: the key in os.environ, a fresh backend and
    a fresh in-process budget."""
    import worker.budget

    monkeypatch.setenv("DAYTONA_API_KEY", API_KEY)
    monkeypatch.setenv("DAYTONA_API_URL", emu.url)
    for name, value in SDK_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(worker.sandbox, "_backends", {})
    monkeypatch.setattr(worker.budget, "_budgets", {})
    return emu


class Cluster:
    def __init__(self, redis: RedisServer, workers: list[CeleryWorker], env: dict[str, str],
                 artifacts: Path):
        self.redis, self.workers, self.env, self.artifacts = redis, workers, env, artifacts

    def logs(self) -> str:
        return "\n".join(w.logtext() for w in self.workers)


@contextlib.contextmanager
def cluster(base: Path, emu: DaytonaEmulator, concurrency: int = 20, workers: int = 1,
            name: str = "q", redis: RedisServer | None = None, **env: str) -> Iterator[Cluster]:
    """redis-server + ``workers`` x ``celery worker -P threads -c concurrency``."""
    artifacts = base / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    own_redis = redis is None
    redis = redis or RedisServer(base / "redis").start()
    full = forge_env(redis.url, artifacts, DAYTONA_API_KEY=API_KEY, DAYTONA_API_URL=emu.url,
                     FORGE_MAX_DEADLINE="120", **SDK_ENV, **env)
    procs = [CeleryWorker(full, f"{name}{i + 1}", base, concurrency, "threads")
             for i in range(workers)]
    try:
        for w in procs:
            w.start(wait_ready=False)
        for w in procs:
            w.wait_ready()
        yield Cluster(redis, procs, full, artifacts)
    finally:
        for w in procs:
            w.stop()
        if own_redis:
            redis.stop()


def cli_run(c: Cluster, manifest: Path, run_id: str, *extra: str,
            timeout: float = 240) -> ForgeResult:
    done = run_forge_cli(["run", "--daytona", "--candidates", str(manifest), "--run-id", run_id,
                          "--json", "--no-post", *extra], c.env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:] + c.logs()[-3000:]
    assert API_KEY not in done.stdout + done.stderr
    return ForgeResult.from_dict(json.loads(done.stdout))


def wait_summary(root: Path, run_id: str, timeout: float = 180) -> ForgeResult:
    path = root / run_id / "summary.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"run {run_id} never finished"
        time.sleep(0.2)
    return ForgeResult.from_dict(json.loads(path.read_text(encoding="utf-8")))


def sleepers(directory: Path, n: int, seconds: float, header: str = "timeout = 60") -> Path:
    return write_manifest(directory, {f"s{i:02d}": SLEEP.format(seconds=seconds)
                                      for i in range(n)}, header)


def alive_for(emu: DaytonaEmulator, run_id: str) -> list[str]:
    with emu.lock:
        return [s.id for s in emu._live.values() if s.labels.get(RUN_LABEL) == run_id]


def creates_for(emu: DaytonaEmulator, run_id: str) -> list[dict]:
    return [c for c in emu.calls if c["path"] == "create" and c["status"] == 200
            and (c.get("labels") or {}).get(RUN_LABEL) == run_id]


def lines_of(result: ForgeResult) -> list[str]:
    return [line for r in result.results for line in r.log]


def all_ok(result: ForgeResult) -> None:
    assert all(r.success for r in result.results), [r.error_message for r in result.results]


# -- the budget ---------------------------------------------------------------------------


def test_twenty_candidates_under_a_quota_of_four_all_succeed(emu, tmp_path):
    """The issue's run: 20 one-second candidates, one worker -P threads -c 20, an account
    that allows 4 sandboxes. Every one succeeds, never more than 4 alive, none left."""
    emu.set_faults(quota_cpu=4, create_latency=0.1)
    manifest = sleepers(tmp_path / "cands", 20, 1.0)
    with cluster(tmp_path, emu, concurrency=20, FORGE_DAYTONA_MAX_SANDBOXES="4") as c:
        t0 = time.monotonic()
        result = cli_run(c, manifest, "q-20x4")
        wall = time.monotonic() - t0
        assert API_KEY not in c.logs()
    all_ok(result)
    assert emu.peak_alive == 4  # never more than 4, and all 4 were used
    assert emu.refused == []  # the budget kept us under the quota: nothing refused
    assert emu.alive() == [] and result.sandboxes_alive == 0
    assert len({r.sandbox_id for r in result.results}) == 20
    waited = [r for r in result.results if any(x.startswith(WAITING) for x in r.log)]
    assert len(waited) >= 12  # 16 had to wait for a slot (some may find one freed at once)
    for r in waited:  # the wait is not the candidate's time
        assert r.timings["slot_wait"] > 0.5 and r.runtime_seconds < r.timings["slot_wait"] + 6
    starts = [r.timings["entered_at"] for r in result.results]
    span = max(r.timings["entered_at"] + r.timings["task"] for r in result.results) - min(starts)
    print(f"\n20 under a quota of 4: CLI wall {wall:.2f}s, first task start to last finish "
          f"{span:.2f}s (ideal 5 x (0.1 + 1) = 5.5s), peak alive {emu.peak_alive}, "
          f"refused {len(emu.refused)}")


def test_twenty_under_four_embedded(embedded, tmp_path, monkeypatch):
    """The same in embedded mode: the in-process budget; the log callback sees the wait
    and the run's tracker (the console's counts) shows candidates WAITING."""
    from dispatcher.runner import execute, prepare

    emu = embedded
    monkeypatch.setenv("FORGE_DAYTONA_MAX_SANDBOXES", "4")
    emu.set_faults(quota_cpu=4)
    manifest = sleepers(tmp_path / "cands", 20, 0.5)
    seen: list[tuple[str, str]] = []
    waiting: list[int] = []
    plan = prepare("twenty under four", True, candidates=str(manifest),
                   artifacts_dir=str(tmp_path / "out"), post=False)
    result = execute(plan, log_callback=lambda cid, line: seen.append((cid, line)),
                     on_tick=lambda tracker: waiting.append(tracker.counts["WAITING"]))
    all_ok(result)
    assert emu.peak_alive == 4 and emu.refused == [] and emu.alive() == []
    assert len({cid for cid, line in seen if line.startswith(WAITING)}) >= 12
    assert max(waiting) >= 4 and waiting[-1] == 0
    assert result.sandboxes_alive == 0


def test_a_budget_above_what_the_account_allows_is_learned_and_said_once(emu, tmp_path):
    """Budget 10 (the default) on an account that allows 4: refusals are waited out, the
    run learns the account's limit and says so once, and every candidate succeeds."""
    emu.set_faults(quota_cpu=4, create_latency=0.1)
    manifest = sleepers(tmp_path / "cands", 12, 1.0)
    with cluster(tmp_path, emu, concurrency=12) as c:
        result = cli_run(c, manifest, "q-learn")
    all_ok(result)
    assert emu.refused and set(emu.refused) == {403}  # the account did refuse...
    assert emu.peak_alive == 4  # ...so never more than it allows were alive
    learned = [x for x in lines_of(result) if x.startswith(LEARNED)]
    assert len(learned) == 1, learned  # said once, for the whole run
    assert "using at most" in learned[0] and "the budget allows 10" in learned[0]
    assert sum(r.timings.get("refused", 0) for r in result.results) == len(emu.refused)
    assert emu.alive() == []


def test_a_killed_worker_gives_its_slots_back_within_the_lease_time(emu, tmp_path):
    ttl = 3
    emu.set_faults(quota_cpu=3)
    env = {"FORGE_DAYTONA_MAX_SANDBOXES": "3", "FORGE_DAYTONA_LEASE_TTL": str(ttl),
           "FORGE_DAYTONA_SLOT_WAIT": "40"}
    redis = RedisServer(tmp_path / "redis").start()
    try:
        live = RedisBudget(redis.url).held  # live (unexpired) leases, on Redis's clock
        with cluster(tmp_path / "a", emu, concurrency=8, name="doomed", redis=redis,
                     **env) as c:
            slow = sleepers(tmp_path / "slow", 3, 60)
            done = run_forge_cli(["run", "--daytona", "--candidates", str(slow), "--run-id",
                                  "q-killed", "--detach"], c.env)
            assert done.returncode == 0, done.stderr
            deadline = time.monotonic() + 60
            while not (len(alive_for(emu, "q-killed")) == 3
                       and all(emu.sandboxes[i].procs for i in alive_for(emu, "q-killed"))):
                assert time.monotonic() < deadline, c.logs()[-3000:]
                time.sleep(0.1)
            assert live() == 3
            w = c.workers[0]
            for pid in [w.proc.pid, *w.child_pids()]:
                os.kill(pid, signal.SIGKILL)
            w.proc.wait(10)
            killed = time.monotonic()
            assert live() == 3  # nobody gave them back...
            while live() > 0:  # ...until they expire
                assert time.monotonic() - killed < ttl + 2, "leases outlived their TTL"
                time.sleep(0.1)
            orphans = alive_for(emu, "q-killed")
            assert len(orphans) == 3  # the sandboxes themselves are the reaper's job
            reaped = run_forge_cli(["reap", "--max-age", "0"], c.env)
            assert reaped.returncode == 0, reaped.stderr
            assert alive_for(emu, "q-killed") == []
        refused_before = len(emu.refused)
        with cluster(tmp_path / "b", emu, concurrency=8, name="later", redis=redis,
                     **env) as c:
            result = cli_run(c, sleepers(tmp_path / "quick", 6, 0.5), "q-later")
        all_ok(result)  # a later run gets all 3 slots: it would wait out its bound if not
        assert len(emu.refused) == refused_before and emu.alive() == []
        assert live() == 0 and redis.client().zcard(leases_key()) == 0
    finally:
        redis.stop()


def test_two_runs_at_once_share_the_budget_and_neither_starves(emu, tmp_path):
    """Run A holds all 4 slots with 10 candidates to go when run B (14) arrives: B gets
    slots while A runs, A keeps getting slots while B runs, both finish.

    A barrier, not timing, makes "B arrives while A holds everything": A's first four
    sandboxes wait before they start (the emulator holds their execs) until all of B's
    candidates are waiting in the budget (a slow start of B's CLI on a loaded machine
    once let A finish nearly alone)."""
    emu.set_faults(quota_cpu=4)
    with cluster(tmp_path, emu, concurrency=32, FORGE_DAYTONA_MAX_SANDBOXES="4") as c:
        a = sleepers(tmp_path / "a", 14, 1.0)
        b = sleepers(tmp_path / "b", 14, 1.0)
        waiting_runs = c.redis.client()
        emu.hold_execs()
        try:
            for manifest, run_id in ((a, "q-run-a"), (b, "q-run-b")):
                done = run_forge_cli(["run", "--daytona", "--candidates", str(manifest),
                                      "--run-id", run_id, "--detach"], c.env)
                assert done.returncode == 0, done.stderr
                deadline = time.monotonic() + 90
                while True:
                    if run_id == "q-run-a":
                        arrived = len(alive_for(emu, run_id)) == 4
                    else:
                        runs = waiting_runs.hvals(waiter_run_key())
                        arrived = runs.count(run_id.encode()) == 14
                    if arrived:
                        break
                    assert time.monotonic() < deadline, c.logs()[-3000:]
                    time.sleep(0.05)
            assert alive_for(emu, "q-run-b") == []  # B waits: A holds every slot
        finally:
            emu.release_execs()
        ra, rb = wait_summary(c.artifacts, "q-run-a"), wait_summary(c.artifacts, "q-run-b")
    all_ok(ra)
    all_ok(rb)
    assert emu.peak_alive == 4 and emu.refused == [] and emu.alive() == []
    times_a = sorted(x["t"] for x in creates_for(emu, "q-run-a"))
    times_b = sorted(x["t"] for x in creates_for(emu, "q-run-b"))
    assert len(times_a) == len(times_b) == 14
    # B made progress while A was running, and A while B was running:
    assert sum(t < times_a[-1] for t in times_b) >= 4
    assert sum(t > times_b[0] for t in times_a) >= 4
    # While both had candidates waiting, the slots went about evenly.
    overlap = [("a", t) for t in times_a if times_b[0] <= t <= min(times_a[-1], times_b[-1])]
    overlap += [("b", t) for t in times_b if times_b[0] <= t <= min(times_a[-1], times_b[-1])]
    share_b = sum(1 for run, _ in overlap if run == "b") / len(overlap)
    assert 0.3 <= share_b <= 0.7, (share_b, times_a, times_b)


def test_flower_shows_a_candidate_waiting_for_a_slot(emu, tmp_path):
    """Each waiting task sends task-waiting (then task-running): a real Flower shows it."""
    from tests.test_flower import get  # the HTTP helper (not a fixture)

    emu.set_faults(quota_cpu=1)
    with cluster(tmp_path, emu, concurrency=4, FORGE_DAYTONA_MAX_SANDBOXES="1") as c:
        port = free_port()
        log = open(tmp_path / "flower.log", "ab")
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
             "--basic-auth=user:pass", "--address=127.0.0.1"], cwd=ROOT, env=c.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError):
                    if get(f"{base}/api/workers?refresh=false", "user:pass")[0] == 200:
                        break
                assert time.monotonic() < deadline, (tmp_path / "flower.log").read_text()
                time.sleep(0.2)
            manifest = sleepers(tmp_path / "cands", 3, 2.0)
            done = run_forge_cli(["run", "--daytona", "--candidates", str(manifest),
                                  "--run-id", "q-flower", "--detach"], c.env)
            assert done.returncode == 0, done.stderr
            seen: dict[str, set[str]] = {}
            deadline = time.monotonic() + 90
            while not (c.artifacts / "q-flower" / "summary.json").exists():
                assert time.monotonic() < deadline
                status, body = get(f"{base}/api/tasks?limit=100", "user:pass")
                if status == 200:
                    for uuid, task in json.loads(body).items():
                        seen.setdefault(uuid, set()).add(task.get("state"))
                time.sleep(0.1)
            result = wait_summary(c.artifacts, "q-flower")
        finally:
            stop_process(flower)
            log.close()
    all_ok(result)
    waited = {f"q-flower:{r.candidate_id}" for r in result.results
              if any(x.startswith(WAITING) for x in r.log)}
    assert len(waited) >= 2  # one slot, three candidates
    shown = {uuid for uuid, states in seen.items() if "WAITING" in states}
    assert shown and shown <= waited  # Flower said WAITING for candidates that waited
    assert any("RUNNING" in seen.get(uuid, set()) for uuid in shown)


def test_the_spent_wait_bound_fails_with_the_quota_and_the_fixes_named(embedded, tmp_path,
                                                                       monkeypatch):
    """Someone else's sandbox fills the account: nothing of ours can free it. After the
    run's wait bound every candidate fails, naming the quota and the fixes; the run ends."""
    emu = embedded
    monkeypatch.setenv("FORGE_DAYTONA_SLOT_WAIT", "3")
    emu.set_faults(quota_cpu=1)
    outsider = emu.new_sandbox({"labels": {"someone": "else"}})
    try:
        manifest = sleepers(tmp_path / "cands", 2, 0.1)
        t0 = time.monotonic()
        result = run_forge("account full", use_daytona=True, candidates=str(manifest),
                           artifacts_dir=str(tmp_path / "out"), post=False)
        assert time.monotonic() - t0 < 30
    finally:
        emu.destroy(outsider)
    assert (tmp_path / "out" / result.run_id / "summary.json").is_file()
    for r in result.results:
        assert not r.success
        assert r.error_message.startswith("Sandbox creation failed: no Daytona sandbox within "
                                          "the run's wait bound of 3s")
        for word in FIX_WORDS:
            assert word in r.error_message, (word, r.error_message)
        assert "Total CPU quota exceeded. Maximum allowed: 1" in r.error_message
    assert set(emu.refused) == {403} and len(emu.refused) >= 2
    assert alive_for(emu, result.run_id) == []


def test_rate_limits_are_waited_out_honouring_retry_after(embedded, tmp_path):
    emu = embedded
    emu.set_faults(create_rate_limit=2, create_rate_window=1.0)
    manifest = sleepers(tmp_path / "cands", 6, 0.1)
    result = run_forge("rate limited", use_daytona=True, candidates=str(manifest),
                       artifacts_dir=str(tmp_path / "out"), post=False)
    all_ok(result)
    assert emu.refused and set(emu.refused) == {429}
    retries = [x for x in lines_of(result) if x.startswith("[Daytona] Rate limited (429)")]
    assert retries and all(float(re.search(r"retrying in ([\d.]+)s", x).group(1)) >= 1.0
                           for x in retries)  # Retry-After: 1 (plus jitter), not our backoff
    creates = sorted(c["t"] for c in emu.calls if c["path"] == "create" and c["status"] == 200)
    assert all(b - a >= 0.9 for a, b in zip(creates, creates[2:], strict=False))  # 2 per second


# -- snapshots, images, resources, network --------------------------------------------------

IMAGE_HEADER = """timeout = 60
[daytona.image]
python = "3.12"
pip = ["emu-package==1.0"]
commands = ["echo built"]
"""


def image_manifest(directory: Path, n: int, header: str = IMAGE_HEADER) -> Path:
    path = sleepers(directory, n, 0.2, header)
    text = path.read_text()  # every candidate needs a package: installed at build time
    text = text.replace('script = "s00.py"', 'script = "s00.py"\nrequirements = ["requests"]')
    text = text.replace('script = "s01.py"', 'script = "s01.py"\nrequirements = ["rich"]')
    path.write_text(text)
    return path


def test_a_declared_image_is_built_once_for_all_candidates_and_reused(emu, tmp_path):
    """Two worker processes race to build the image: one build (Daytona's conflict answer
    stops the second), every candidate starts from its snapshot, requirements install at
    build time, and the next run reuses it."""
    emu.set_faults(build_delay=1.5)
    manifest = image_manifest(tmp_path / "cands", 8)
    with cluster(tmp_path, emu, concurrency=4, workers=2) as c:
        first = cli_run(c, manifest, "q-image-1")
        second = cli_run(c, manifest, "q-image-2")
    all_ok(first)
    all_ok(second)
    assert len(emu.builds) == 1
    (name,) = emu.builds
    assert re.fullmatch(r"dream-foundry-[0-9a-f]{16}", name)
    built = [x for x in emu.calls if x["path"] == "snapshot-create" and x["status"] == 200]
    assert len(built) == 1
    dockerfile = built[0]["dockerfile"]
    assert "pip install emu-package==1.0 requests rich" in dockerfile and "echo built" in dockerfile
    for run in (first, second):
        creates = creates_for(emu, run.run_id)
        assert len(creates) == 8 and {x["snapshot"] for x in creates} == {name}
    executes = [x["command"] for x in emu.calls if x["path"] == "execute"]
    assert executes and not any("pip" in x for x in executes)  # nothing installed per candidate
    assert not any(line.startswith("[Daytona] Installing Dependencies")
                   for line in lines_of(first) + lines_of(second))
    assert emu.alive() == []


def test_snapshot_names_carry_a_hash_of_the_content():
    import daytona

    from worker.records import ImageSpec, Resources
    from worker.sandbox.daytona_image import build_image, snapshot_name

    def name(spec: ImageSpec, res: Resources = Resources()) -> str:
        return snapshot_name(build_image(daytona, spec).dockerfile(), res)

    base = ImageSpec(python="3.12", pip=("a==1",))
    assert name(base) == name(ImageSpec(python="3.12", pip=("a==1",)))  # stable
    assert len({name(base), name(ImageSpec(python="3.12", pip=("a==2",))),
                name(ImageSpec(python="3.11", pip=("a==1",))),
                name(ImageSpec(base="python:3.12-slim", pip=("a==1",))),
                name(base, Resources(cpu=2))}) == 5


def test_resources_build_a_sized_snapshot_and_size_the_budget(embedded, tmp_path,
                                                                monkeypatch):
    """2-vCPU sandboxes with a budget of 4 (so 4 vCPU): two alive at once, never refused."""
    emu = embedded
    monkeypatch.setenv("FORGE_DAYTONA_MAX_SANDBOXES", "4")
    emu.set_faults(quota_cpu=4)
    header = IMAGE_HEADER + "[daytona.resources]\ncpu = 2\nmemory = 2\n"
    manifest = sleepers(tmp_path / "cands", 6, 0.5, header)
    result = run_forge("sized", use_daytona=True, candidates=str(manifest),
                       artifacts_dir=str(tmp_path / "out"), post=False)
    all_ok(result)
    built = [x for x in emu.calls if x["path"] == "snapshot-create" and x["status"] == 200]
    assert len(built) == 1 and (built[0]["cpu"], built[0]["memory"]) == (2, 2)
    assert emu.peak_alive == 2 and emu.refused == []


def test_network_allow_lists_reach_the_api(embedded, tmp_path):
    emu = embedded
    header = ('[daytona]\nnetwork_allow_list = ["10.0.0.0/8", "192.168.1.0/24"]\n'
              'domain_allow_list = ["pypi.org", "*.github.com"]\n')
    manifest = sleepers(tmp_path / "cands", 1, 0.1, header)
    result = run_forge("allow-listed", use_daytona=True, candidates=str(manifest),
                       artifacts_dir=str(tmp_path / "out"), post=False)
    all_ok(result)
    (create,) = creates_for(emu, result.run_id)
    assert create["networkAllowList"] == "10.0.0.0/8,192.168.1.0/24"
    assert create["domainAllowList"] == "pypi.org,*.github.com"
    assert create["networkBlockAll"] is False
    assert result.results[0].isolation.endswith("network limited to an allow-list")


def test_a_missing_snapshot_fails_clearly(embedded, tmp_path):
    manifest = sleepers(tmp_path / "cands", 1, 0.1, '[daytona]\nsnapshot = "no-such-snap"\n')
    result = run_forge("missing", use_daytona=True, candidates=str(manifest),
                       artifacts_dir=str(tmp_path / "out"), post=False)
    (r,) = result.results
    assert r.error_message == ("Sandbox creation failed: snapshot 'no-such-snap' does not "
                               "exist on the Daytona account: create it, or fix 'snapshot' "
                               "in the manifest's [daytona] table")


# -- stuck and stopped sandboxes ------------------------------------------------------------


def test_stuck_sandboxes_are_retried_counted_and_reported(embedded, tmp_path):
    """One sandbox never finishes deleting, one never starts: the delete is sent again,
    both are counted on their results and in the run's audit, the run goes on."""
    emu = embedded
    worker.sandbox._backends["daytona"] = DaytonaBackend(create_timeout=2, delete_timeout=1,
                                                         delete_attempts=2)
    emu.set_faults(stuck_deletes=1, never_start=1)
    manifest = sleepers(tmp_path / "cands", 3, 0.1)
    result = run_forge("stuck", use_daytona=True, candidates=str(manifest),
                       artifacts_dir=str(tmp_path / "out"), post=False)
    emu.reset_faults()
    never = [r for r in result.results if not r.success]
    assert len(never) == 1 and "not started within 2s" in never[0].error_message
    assert never[0].stuck_sandboxes == [never[0].sandbox_id]
    deleting = [r for r in result.results if r.success and r.stuck_sandboxes]
    assert len(deleting) == 1
    (stuck_id,) = deleting[0].stuck_sandboxes
    assert stuck_id == deleting[0].sandbox_id
    assert any("still deleting after 2 attempts" in w and "forge reap" in w
               for w in deleting[0].warnings)
    deletes = [x for x in emu.calls if x["path"] == "delete" and x.get("sandbox") == stuck_id]
    assert len(deletes) == 2  # retried
    assert result.sandboxes_alive == 1
    assert any(n.startswith("2 Daytona sandbox(es) got stuck") for n in result.notes)
    assert any(n.startswith("1 Daytona sandbox(es) of this run still alive at its end: "
                            f"{stuck_id} (destroying)") for n in result.notes)
    assert emu.finish_deletes() == [stuck_id]


def test_reap_clears_stopped_sandboxes_whatever_their_age(embedded):
    from worker.sandbox.base import SandboxRequest

    emu = embedded
    backend = DaytonaBackend()
    boxes = [backend.create(SandboxRequest(run_id=f"q-stop-{i}", candidate_id="c", timeout=5),
                            lambda _m: None) for i in range(2)]
    emu.stop_sandbox(boxes[0].id)
    listed = backend.reap(3600, dry_run=True)
    assert [(e["id"], e["state"], e["deleted"]) for e in listed] == [
        (boxes[0].id, "stopped", False)]
    reaped = backend.reap(3600)
    assert [(e["id"], e["deleted"]) for e in reaped] == [(boxes[0].id, True)]
    assert emu.alive() == [boxes[1].id]  # the young running one is left alone
    boxes[1].delete()
