"""The hostile suite: real candidate scripts (tests/hostile/*.py) that attack the worker.

All of them run together, as one competition would, next to a well-behaved candidate.
Each must end as a failed (or, where it behaves, successful) result with a clear
reason, while the worker survives, the well-behaved candidate succeeds and nothing
outside the sandboxes changes.

Two drivers share the cases and the checks:

* ``test_hostile_lifecycle``: every case through ``worker.lifecycle.run_lifecycle`` with
  the ``LocalBackend``, concurrently on a thread pool (the sandbox layer, no Celery).
* ``test_hostile_through_forge``: the same scripts as one manifest through ``forge run``
  and a real ``celery -A worker worker`` on a password-protected redis-server, network
  on; plus a second small competition with the network off.
* ``test_isolation_cases_fail_without_isolation``: the control. The same cases with
  bubblewrap off (the no-isolation fallback: rlimits, cgroups and deadline still on):
  exactly the ``ISOLATION_CASES`` must fail their checks, so each of those checks can
  tell an isolated sandbox from one that is not. The other cases test limits, the
  capture and the artifact reader, and pass either way.

The worker's credentials (broker URL and Redis password, Daytona key, Discord webhook,
Flower login) are in the worker's environment while the candidates run, checked there
as a positive control, and asked for by the competition's allow-list: none of them may
reach anything a candidate can read (its environment, /proc, files) or its result.

These tests need bubblewrap and FAIL (never skip) without it: the point is isolation.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from worker.lifecycle import run_lifecycle
from worker.records import CandidateResult, CandidateTask, Limits, sha256_text
from worker.sandbox.local import LocalBackend, bwrap

# Every test starts processes (hostile candidates in local sandboxes); tests/markers.py.
pytestmark = pytest.mark.processes

HOSTILE = Path(__file__).resolve().parent / "hostile"
REPO = Path(__file__).resolve().parent.parent
CONFIG_LINE = "CONFIG = {}  # forge-hostile-config"
TIMEOUT = 5  # the deadline of the cases that test it: the infinite loop, the fork bomb
# Every other case must end on its own (its checks need it to finish): a deadline that
# only bounds a broken run. The flood moves 1 GiB through the capture (0.6 s alone), a
# plain case starts an interpreter (0.1 s alone): among 16 others and a fork bomb on 2
# cores shared with other work that took over 5 s.
FINISHES_BY = 40
DEADLINE_CASES = frozenset({"infinite_loop", "fork_bomb"})


def case_timeout(case: str) -> int:
    return TIMEOUT if case in DEADLINE_CASES else FINISHES_BY
OBJECTIVE = "Generate weekly 'AI Events in San Francisco' post for Discord"
LIMITS = Limits(memory_mb=512, max_processes=64, max_file_mb=128, output_bytes=64 * 1024,
                artifact_bytes=256 * 1024)


def require_bwrap() -> None:
    probe = bwrap.probe()
    assert probe.ok, (
        f"bubblewrap sandbox unavailable: {probe.reason}. The hostile suite needs it; "
        "fix: apt-get install bubblewrap slirp4netns"
    )


# --------------------------------------------------------------------------- world


class LoopbackServer:
    """A TCP server on the worker's loopback that records every connection."""

    def __init__(self, host: str = "127.0.0.1"):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits: list[tuple] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                continue
            self.hits.append(addr)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@dataclass
class World:
    """What the hostile candidates attack, and how to tell whether they succeeded."""

    tmp: Path
    tag: str
    secret: str
    marker: str
    server: LoopbackServer  # what ``loopback`` (network on) tries to reach
    server_off: LoopbackServer  # what ``loopback_off`` (network off) tries to reach
    artifacts: Path
    victim: Path
    victim_file: Path
    heartbeat: Path
    secret_file: Path
    targets: list[Path] = field(default_factory=list)
    credentials: dict[str, str] = field(default_factory=dict)  # the worker's, by variable
    secret_files: list[Path] = field(default_factory=list)  # readable outside, not inside

    def leaks(self) -> list[str]:
        """Every credential value, and the parts that are secrets on their own."""
        password = self.credentials["REDIS_PASSWORD"]
        token = self.credentials["DISCORD_WEBHOOK_URL"].rsplit("/", 1)[-1]
        return [*self.credentials.values(), password, token, self.secret]

    def config(self, case: str, unisolated: bool = False) -> dict:
        """A case's CONFIG. ``unisolated``: for the control run without bubblewrap, where
        a write succeeds on the host: only paths this test owns are attacked."""
        if unisolated and case == "write_escape":
            return {**self.config(case), "system_targets": [], "scan_tmp": False}
        if unisolated and case == "read_secrets":  # not other processes' environments
            return {**self.config(case), "scan_proc": False}
        if unisolated and case == "daemon":
            return {**self.config(case), "tmp_heartbeat": str(self.tmp / "tmp-heartbeat")}
        return {
            "write_escape": {
                "targets": [str(p) for p in self.targets],
                "victim_dirs": [str(self.victim)],
                "delete": [str(self.victim_file)],
            },
            "read_secrets": {"secret_files": [str(p) for p in self.secret_files]},
            "symlink_artifact": {"target": str(self.secret_file)},
            "daemon": {"heartbeat": str(self.heartbeat), "marker": self.marker},
            "loopback": {"port": self.server.port},
            "loopback_off": {"port": self.server_off.port},
        }.get(case, {})


@pytest.fixture()
def world(tmp_path, monkeypatch):
    require_bwrap()
    monkeypatch.setenv("FORGE_REQUIRE_ISOLATION", "1")
    tag = uuid.uuid4().hex[:10]
    secret = f"hostile-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("FORGE_HOSTILE_SECRET", secret)
    monkeypatch.setenv("FORGE_TEST_ALLOWED", f"allowed-{tag}")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    victim = tmp_path / "forge-victim" / "work"
    victim.mkdir(parents=True)
    victim_file = victim / "keep.txt"
    victim_file.write_text("keep me\n")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    name = f"forge-hostile-pwned-{tag}"
    targets = [REPO / name, Path.home() / name, artifacts / name, REPO / "worker" / name,
               tmp_path / name]
    credentials = worker_credentials(tag)
    # Where a worker keeps secrets: a private key and shell history in its home, its
    # .env. Made here (the host's own /root may have none): each exists and is readable
    # outside the sandbox, which is what makes "blocked" inside mean something.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n")
    key.chmod(0o600)
    (home / ".bash_history").write_text(f"redis-cli -a {credentials['REDIS_PASSWORD']}\n")
    dotenv = tmp_path / "worker.env"
    dotenv.write_text("".join(f"{k}={v}\n" for k, v in credentials.items()))
    secret_files = [secret_file, key, home / ".bash_history", dotenv, Path("/etc/shadow"),
                    Path("/etc/gshadow"), REPO / "pyproject.toml", REPO / "worker" / "config.py",
                    artifacts]
    server, server_off = LoopbackServer(), LoopbackServer()
    w = World(tmp=tmp_path, tag=tag, secret=secret, marker=f"forge-daemon-marker-{tag}",
              server=server, server_off=server_off, artifacts=artifacts, victim=victim,
              victim_file=victim_file,
              heartbeat=tmp_path / "heartbeat.txt", secret_file=secret_file, targets=targets,
              credentials=credentials, secret_files=secret_files)
    for path in secret_files:  # the positive control of every "blocked" below
        assert os.access(path, os.R_OK), f"{path} must exist and be readable outside"
        if path.is_file():
            assert path.read_bytes(), path
    yield w
    server.close()
    server_off.close()
    for target in targets:  # if an escape did happen, do not leave litter behind
        if target.exists():
            target.unlink()
    _kill_marked(w.marker)


def worker_credentials(tag: str) -> dict[str, str]:
    """A distributed worker's secrets, as its environment holds them (docker-compose)."""
    password = f"hostile-redis-pw-{uuid.uuid4().hex}"
    broker = f"redis://:{password}@127.0.0.1:6399/0"
    return {
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": broker,
        "REDIS_PASSWORD": password,
        "DAYTONA_API_KEY": f"dtn_hostile_{uuid.uuid4().hex}",
        "DISCORD_WEBHOOK_URL": ("http://127.0.0.1:9/api/webhooks/987654321/"
                                f"hostile-webhook-token-{uuid.uuid4().hex}"),
        "FLOWER_BASIC_AUTH": f"admin:hostile-flower-{tag}",
    }


def render(script: str, config: dict) -> str:
    text = (HOSTILE / script).read_text("utf-8")
    if config:
        assert CONFIG_LINE in text, f"{script} has no config line"
        text = text.replace(CONFIG_LINE, f"CONFIG = {config!r}")
    return text


def _marked_pids(marker: str) -> list[int]:
    found = []
    needle = marker.encode()
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as fh:
                if needle in fh.read():
                    found.append(int(path.split("/")[2]))
        except OSError:
            pass
    return [pid for pid in found if pid != os.getpid()]


def _kill_marked(marker: str) -> None:
    import signal

    for pid in _marked_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _proc_count() -> int:
    return len(glob.glob("/proc/[0-9]*"))


class ProcWatch:
    """Samples the host's process count while the suite runs (fork bomb containment)."""

    def __init__(self):
        self.base = _proc_count()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _proc_count())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(timeout=2)
        return self.peak - self.base


# --------------------------------------------------------------------------- cases

Check = Callable[[CandidateResult, World, Limits], None]


def brief(r: CandidateResult) -> str:
    return (f"success={r.success} exit={r.exit_code} timed_out={r.timed_out} "
            f"error={r.error_message!r} warnings={r.warnings} output=...{r.output[-800:]!r}")


def _failed(r: CandidateResult) -> None:
    assert not r.success, brief(r)
    assert r.error_message, "a failure must say why"


def check_well_behaved(r, w, lim):
    assert r.success, brief(r)
    assert r.artifact_content and r.artifact_content.startswith("# Weekly post")
    assert r.isolation and r.isolation.startswith("bubblewrap"), r.isolation


# Deadline checks: the sandbox is killed at TIMEOUT (5 s); the kill and the cleanup add
# about 0.1 s (median 5.1 s among 17 at once): 16 s is over 3x that.
KILLED_BY = 3 * TIMEOUT + 1


def check_infinite_loop(r, w, lim):
    _failed(r)
    assert r.timed_out and r.error_message == f"Execution timed out after {TIMEOUT}s " \
        "(sandbox killed)", brief(r)
    assert "looping" in r.output
    assert r.runtime_seconds < KILLED_BY


def check_fork_bomb(r, w, lim):
    # The process cap refused forks (the bomb says so), and the deadline ended it: a
    # bomb that never hit the cap would print nothing, one that got out would not die.
    _failed(r)
    assert "fork refused" in r.output, brief(r)
    assert r.timed_out and "timed out" in r.error_message, brief(r)
    assert r.runtime_seconds < KILLED_BY


def check_alloc(r, w, lim):
    # The address-space limit refuses the 20 GiB at once, and stops the piecemeal
    # allocation at or below the sandbox's memory cap.
    _failed(r)
    assert "limit missing" not in r.output, r.output
    assert "single 20 GiB allocation refused" in r.output, brief(r)
    got = re.search(r"piecemeal allocation stopped at (\d+) MiB", r.output)
    assert got and int(got.group(1)) <= lim.memory_mb, brief(r)
    assert r.exit_code == 1 and not r.timed_out, brief(r)


def check_big_file(r, w, lim):
    # The file-size limit (RLIMIT_FSIZE) stops the write: EFBIG, exit 1, long before
    # 10 GiB or the deadline.
    _failed(r)
    assert "limit missing" not in r.output, r.output
    assert "OSError: [Errno 27] File too large" in r.output, brief(r)
    assert r.exit_code == 1 and not r.timed_out, brief(r)


def check_flood(r, w, lim):
    # 1 GiB went to stdout: only the tail is kept, and the result says how much went.
    assert not r.timed_out, f"the flood must finish within {FINISHES_BY}s"
    assert r.success, brief(r)
    assert r.output_dropped_bytes >= (1 << 30) - lim.output_bytes, brief(r)
    assert len(r.output.encode("utf-8")) <= lim.output_bytes + 200
    assert str(r.output_dropped_bytes) in r.output
    assert r.output.rstrip().endswith("END-OF-FLOOD")


def check_daemon(r, w, lim):
    assert r.success, brief(r)  # the parent behaved; its daemon must be gone
    assert not _marked_pids(w.marker), "the daemonised grandchild survived the sandbox"
    assert not w.heartbeat.exists(), "the daemon wrote outside its sandbox"


def check_write_escape(r, w, lim):
    assert r.success, brief(r)
    report = r.artifact_content or ""
    assert "blocked" in report
    assert "WROTE" not in report and "DELETED" not in report, report
    for target in w.targets:
        assert not target.exists(), f"candidate wrote {target}"
    assert w.victim_file.read_text() == "keep me\n"
    assert sorted(p.name for p in w.victim.iterdir()) == ["keep.txt"]
    assert list(w.artifacts.glob("forge-hostile-pwned-*")) == []


def check_read_secrets(r, w, lim):
    assert r.success, brief(r)
    report = r.artifact_content or ""
    everything = (r.output or "") + report + json.dumps(r.to_dict())
    # Every secret file the worker can read (the world fixture checked) is blocked here.
    for path in w.secret_files:
        assert f"\nblocked {path}: " in report, f"{path} visible in the sandbox: {report[:3000]}"
    for path in ("/root/.ssh/id_rsa", "/root/.bash_history", "/etc/ssl/private"):
        assert f"\nblocked {path}: " in report, report[:3000]
    # The probe works: it reads what the sandbox does have, its own environment in
    # /proc (pid 1 is the sandbox's init) and os.environ, allow-listed variable included.
    assert "\nread /proc/self/environ: " in report and "\nread /proc/1/environ: " in report
    assert f"'FORGE_TEST_ALLOWED': 'allowed-{w.tag}'" in report
    # None of the worker's credentials, though the allow-list asked for every one.
    found = [value for value in w.leaks() if value in everything]
    assert found == [], f"worker secrets reached the candidate: {found}"
    for name in w.credentials:
        assert f"'{name}'" not in report.split("\nenviron: ", 1)[1], name


def check_symlink_artifact(r, w, lim):
    _failed(r)
    assert r.artifact_content is None
    assert any("symlink" in x for x in r.warnings), r.warnings
    assert w.secret not in (r.output or "") + str(r.to_dict())


def check_big_artifact(r, w, lim):
    assert r.artifact_truncated, brief(r)
    assert r.artifact_content is not None
    assert len(r.artifact_content.encode("utf-8")) <= lim.artifact_bytes
    assert r.success, brief(r)


def check_binary_artifact(r, w, lim):
    assert r.success, brief(r)
    assert "\ufffd" in r.artifact_content and "\ufffd" in r.output


def _check_loopback(r, server: LoopbackServer) -> None:
    assert server.hits == [], f"the candidate reached the worker's loopback: {server.hits}"
    report = r.artifact_content or ""
    assert r.success, brief(r)
    for host in ("127.0.0.1", "10.0.2.2", "localhost"):  # tried, and refused, every one
        assert f"blocked {host}: " in report, report


def check_loopback(r, w, lim):
    _check_loopback(r, w.server)


def check_loopback_off(r, w, lim):
    _check_loopback(r, w.server_off)


def check_kill_pgroup(r, w, lim):
    _failed(r)
    assert not r.timed_out
    assert r.exit_code not in (0, None)


def check_close_stdout(r, w, lim):
    assert r.success, brief(r)
    assert "closing stdout now" in r.output


def check_os_exit(r, w, lim):
    _failed(r)
    assert r.exit_code == 0
    assert "Artifact missing" in r.error_message


# id -> (script, network, check)
CASES: dict[str, tuple[str, bool, Check]] = {
    "well_behaved": ("well_behaved.py", True, check_well_behaved),
    "infinite_loop": ("infinite_loop.py", True, check_infinite_loop),
    "fork_bomb": ("fork_bomb.py", True, check_fork_bomb),
    "alloc_20g": ("alloc_20g.py", True, check_alloc),
    "big_file": ("big_file.py", True, check_big_file),
    "stdout_flood": ("stdout_flood.py", True, check_flood),
    "daemon": ("daemon.py", True, check_daemon),
    "write_escape": ("write_escape.py", True, check_write_escape),
    "read_secrets": ("read_secrets.py", True, check_read_secrets),
    "symlink_artifact": ("symlink_artifact.py", True, check_symlink_artifact),
    "big_artifact": ("big_artifact.py", True, check_big_artifact),
    "binary_artifact": ("binary_artifact.py", True, check_binary_artifact),
    "loopback": ("loopback.py", True, check_loopback),  # network ON: loopback still shut
    "loopback_off": ("loopback.py", False, check_loopback_off),  # network OFF
    "kill_pgroup": ("kill_pgroup.py", True, check_kill_pgroup),
    "close_stdout": ("close_stdout.py", True, check_close_stdout),
    "os_exit": ("os_exit.py", True, check_os_exit),
}
# The cases whose checks tell isolation (namespaces, mounts, the network policy) from
# none: with bubblewrap off they fail, and must (test_isolation_cases_fail_without_isolation).
# The rest test limits, the capture and the artifact reader, with or without isolation.
# (well_behaved: its result must say it ran under bubblewrap.)
ISOLATION_CASES = frozenset({"well_behaved", "daemon", "write_escape", "read_secrets",
                             "loopback", "loopback_off"})
# The allow-list asks for every credential: the sandbox environment must refuse them.
ENV_ALLOW = ("FORGE_TEST_ALLOWED", "LANG", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
             "REDIS_PASSWORD", "DAYTONA_API_KEY", "DISCORD_WEBHOOK_URL", "FLOWER_BASIC_AUTH")


def failing_checks(results: dict[str, CandidateResult], w: World, lim: Limits,
                   cases: list[str]) -> dict[str, str]:
    """case -> why its check failed, for every case whose check failed."""
    failures = {}
    for case in cases:
        r = results.get(case)
        if r is None:
            failures[case] = "no result"
            continue
        try:
            CASES[case][2](r, w, lim)
        except AssertionError as exc:
            failures[case] = str(exc)[:2000]
    return failures


def check_all(results: dict[str, CandidateResult], w: World, lim: Limits,
              cases: list[str]) -> None:
    failures = failing_checks(results, w, lim, cases)
    assert not failures, "\n".join(f"{c}: {why}" for c, why in failures.items())


def leftover_sandboxes(tag: str) -> list[str]:
    from worker.sandbox.local.parent_dir import sandbox_parent

    return glob.glob(os.path.join(sandbox_parent(), f"forge-h{tag}-*"))


# --------------------------------------------------------------------------- drivers


def _run_cases(world: World, cases: list[str],
               unisolated: bool = False) -> dict[str, CandidateResult]:
    """Every case through run_lifecycle at once, on the local backend, with the worker's
    credentials in this (the worker's) environment."""
    backend = LocalBackend()
    run_id = f"hostile-{world.tag}"

    def one(case: str) -> CandidateResult:
        script, network, _ = CASES[case]
        text = render(script, world.config(case, unisolated))
        task = CandidateTask(
            run_id=run_id, candidate_id=f"h{world.tag}-{case}", name=case,
            script_name=script, script=text, script_sha256=sha256_text(text),
            objective=OBJECTIVE, timeout=case_timeout(case), network=network,
            env_allow=ENV_ALLOW, limits=LIMITS,
        )
        lines: list[str] = []
        return run_lifecycle(backend, task, lines.append)

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        return dict(zip(cases, pool.map(one, cases), strict=True))


@pytest.fixture()
def credentials_in_env(world, monkeypatch):
    """The worker's credentials in this process's environment: what ``run_lifecycle``
    builds the sandbox environment from (conftest.py keeps the developer's own out)."""
    for name, value in world.credentials.items():
        monkeypatch.setenv(name, value)
    return world.credentials


def _assert_in_env(credentials: dict[str, str], environ: dict[str, str], where: str) -> None:
    """The positive control: the credentials really are where the candidates run from."""
    missing = [k for k, v in credentials.items() if environ.get(k) != v]
    assert missing == [], f"{where} lacks {missing}: the leak checks would prove nothing"


def test_hostile_lifecycle(world, credentials_in_env):
    """Every case through run_lifecycle, concurrently, on the local backend."""
    cases = list(CASES)
    _assert_in_env(credentials_in_env, dict(os.environ), "the worker's environment")
    watch = ProcWatch()
    results = _run_cases(world, cases)
    grew = watch.stop()
    _assert_in_env(credentials_in_env, dict(os.environ), "the worker's environment")
    check_all(results, world, LIMITS, cases)
    assert grew < len(cases) * 8 + LIMITS.max_processes * 2, f"process count grew by {grew}"
    assert leftover_sandboxes(world.tag) == []
    time.sleep(0.3)
    assert not _marked_pids(world.marker)


def test_isolation_cases_fail_without_isolation(world, credentials_in_env, monkeypatch):
    """The control of the isolation checks: with bubblewrap off (the fallback keeps
    rlimits, cgroups, the deadline and the environment filter), exactly the isolation
    cases fail their checks. A check that passed here could not tell isolation from
    none; a limit case failing here would be testing isolation by accident. Without
    isolation the attacks do reach the host, so here they aim only at what this test
    owns (``World.config(unisolated=True)``)."""
    # Not the fork bomb: a limits case, and without a PID namespace it forks on the host.
    cases = [c for c in CASES if c != "fork_bomb"]
    monkeypatch.setenv("FORGE_SANDBOX", "plain")
    monkeypatch.delenv("FORGE_REQUIRE_ISOLATION")
    bwrap.probe.cache_clear()
    try:
        results = _run_cases(world, cases, unisolated=True)
    finally:
        monkeypatch.delenv("FORGE_SANDBOX")
        bwrap.probe.cache_clear()
        _kill_marked(world.marker)  # the daemon does get out without a PID namespace
    assert all(r.isolation.startswith("NONE:") for r in results.values())
    failed = failing_checks(results, world, LIMITS, cases)
    assert set(failed) == ISOLATION_CASES, (
        f"failing without isolation: {sorted(failed)}, expected {sorted(ISOLATION_CASES)}; "
        + "\n".join(f"{c}: {why[:300]}" for c, why in failed.items()))


def _write_manifest(directory: Path, w: World, cases: list[str], network: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"timeout = {TIMEOUT}", f"network = {'true' if network else 'false'}",
             f"env = {list(ENV_ALLOW)!r}".replace("'", '"'), ""]
    for case in cases:
        script = CASES[case][0]
        (directory / f"{case}.py").write_text(render(script, w.config(case)), "utf-8")
        lines += ["[[candidate]]", f'id = "{case.replace("_", "-")}"', f'name = "{case}"',
                  f'script = "{case}.py"']
        lines.append(f"timeout = {case_timeout(case)}")
        lines.append("")
    path = directory / "candidates.toml"
    path.write_text("\n".join(lines), "utf-8")
    return path


def _assert_worker_holds(redis, credentials: dict[str, str]) -> None:
    """The positive control, asked of a pool process of the worker (tests/env_probe.py)."""
    from tests.env_probe import digest
    from tests.procs import call_task

    got = call_task(redis, "tests.env_probe.environ", sorted(credentials))
    missing = [k for k, v in credentials.items() if got.get(k) != digest(v)]
    assert missing == [], f"the worker lacks {missing}: the leak checks would prove nothing"


def test_hostile_through_forge(world, workers, tmp_path):
    """The suite as real competitions: ``forge run`` and a real Celery worker whose
    environment holds real credentials (its broker is a redis-server with a password)."""
    from tests.procs import RedisServer, forge_env, run_forge_cli

    password = world.credentials["REDIS_PASSWORD"]
    redis = RedisServer(tmp_path / "redis", password=password).start()
    try:
        credentials = {**world.credentials, "CELERY_BROKER_URL": redis.url,
                       "CELERY_RESULT_BACKEND": redis.url}
        world.credentials.update(credentials)
        env = forge_env(redis.url, world.artifacts, **credentials,
                        FORGE_REQUIRE_ISOLATION="1", FORGE_HOSTILE_SECRET=world.secret,
                        FORGE_TEST_ALLOWED=f"allowed-{world.tag}")
        on_cases = [c for c, (_, net, _) in CASES.items() if net]
        workers(env, n=1, concurrency=len(on_cases), extra_args=("-I", "tests.env_probe"))
        _assert_worker_holds(redis, credentials)
        watch = ProcWatch()
        for cases, network in ((on_cases, True), (["well_behaved", "loopback_off"], False)):
            manifest = _write_manifest(world.tmp / f"manifest-{network}", world, cases, network)
            run_id = f"hostile-{world.tag}-{'on' if network else 'off'}"
            done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", run_id,
                                  "--no-post"], env, timeout=300)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            run_dir = world.artifacts / run_id
            results = {c: CandidateResult.from_dict(json.loads(
                (run_dir / c.replace("_", "-") / "result.json").read_text())) for c in cases}
            check_all(results, world, Limits(), cases)  # the forge's default limits
            files = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*")
                            if p.is_file())
            assert [v for v in world.leaks() if v in files] == [], "a secret in the run dir"
        grew = watch.stop()
        _assert_worker_holds(redis, credentials)
    finally:
        redis.stop()
    assert grew < len(CASES) * 8 + Limits().max_processes * 2, f"process count grew by {grew}"
    time.sleep(0.3)
    assert not _marked_pids(world.marker)
