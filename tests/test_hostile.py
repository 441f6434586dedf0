"""The hostile suite: real candidate scripts (tests/hostile/*.py) that attack the worker.

All of them run together, as one competition would, next to a well-behaved candidate.
Each must end as a failed (or, where it behaves, successful) result with a clear
reason, while the worker survives, the well-behaved candidate succeeds and nothing
outside the sandboxes changes.

Two drivers share the cases and the checks:

* ``test_hostile_lifecycle``: every case through ``worker.lifecycle.run_lifecycle`` with
  the ``LocalBackend``, concurrently on a thread pool (the sandbox layer, no Celery).
* ``test_hostile_through_forge``: the same scripts as one manifest through
  ``dispatcher.run_forge`` (embedded Celery worker), network on; plus a second small
  competition with the network off. Switch off with ``FORGE_LEVEL = False``.

These tests need bubblewrap and FAIL (never skip) without it: the point is isolation.
"""

from __future__ import annotations

import glob
import os
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

FORGE_LEVEL = True  # run the suite through dispatcher.run_forge as well

HOSTILE = Path(__file__).resolve().parent / "hostile"
REPO = Path(__file__).resolve().parent.parent
CONFIG_LINE = "CONFIG = {}  # forge-hostile-config"
TIMEOUT = 5
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
    server: LoopbackServer
    artifacts: Path
    victim: Path
    victim_file: Path
    heartbeat: Path
    secret_file: Path
    targets: list[Path] = field(default_factory=list)

    def config(self, case: str) -> dict:
        return {
            "write_escape": {
                "targets": [str(p) for p in self.targets],
                "victim_dirs": [str(self.victim)],
                "delete": [str(self.victim_file)],
            },
            "read_secrets": {"secret_files": [str(self.secret_file), str(REPO / "pyproject.toml"),
                                              str(REPO / ".env"), str(self.artifacts)]},
            "symlink_artifact": {"target": str(self.secret_file)},
            "daemon": {"heartbeat": str(self.heartbeat), "marker": self.marker},
            "loopback": {"port": self.server.port},
            "loopback_off": {"port": self.server.port},
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
    server = LoopbackServer()
    w = World(tmp=tmp_path, tag=tag, secret=secret, marker=f"forge-daemon-marker-{tag}",
              server=server, artifacts=artifacts, victim=victim, victim_file=victim_file,
              heartbeat=tmp_path / "heartbeat.txt", secret_file=secret_file, targets=targets)
    yield w
    server.close()
    for target in targets:  # if an escape did happen, do not leave litter behind
        if target.exists():
            target.unlink()
    _kill_marked(w.marker)


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


def check_infinite_loop(r, w, lim):
    _failed(r)
    assert r.timed_out and "timed out" in r.error_message
    assert r.runtime_seconds < TIMEOUT + 5


def check_fork_bomb(r, w, lim):
    _failed(r)
    assert r.runtime_seconds < TIMEOUT + 5


def check_alloc(r, w, lim):
    _failed(r)
    assert "limit missing" not in r.output, r.output
    assert "refused" in r.output or "stopped" in r.output or r.exit_code, r.output


def check_big_file(r, w, lim):
    _failed(r)
    assert "limit missing" not in r.output, r.output


def check_flood(r, w, lim):
    # 1 GiB went to stdout: only the tail is kept, and the result says how much went.
    assert r.output_dropped_bytes > 0, brief(r)
    assert len(r.output.encode("utf-8")) <= lim.output_bytes + 200
    assert str(r.output_dropped_bytes) in r.output
    if not r.timed_out:
        assert r.output_dropped_bytes >= (1 << 30) - lim.output_bytes
        assert "END-OF-FLOOD" in r.output
        assert r.success, brief(r)


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
    everything = (r.output or "") + (r.artifact_content or "")
    assert w.secret not in everything, "the worker's secret reached the candidate"
    assert "read /etc/shadow" not in everything
    assert "read /etc/gshadow" not in everything
    assert "LISTED /etc/ssl/private" not in everything
    assert f"read {REPO}" not in everything, "the repository is visible"
    assert f"LISTED {w.artifacts}" not in everything, "the artifacts directory is visible"
    # The allow-listed variable does get through (the allow-list works, not just "nothing").
    assert f"allowed-{w.tag}" in everything


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


def check_loopback(r, w, lim):
    assert w.server.hits == [], f"a candidate reached the worker's loopback: {w.server.hits}"
    report = r.artifact_content or ""
    assert "CONNECTED 127.0.0.1" not in report and "CONNECTED localhost" not in report, report
    assert r.success, brief(r)


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
    "loopback_off": ("loopback.py", False, check_loopback),  # network OFF
    "kill_pgroup": ("kill_pgroup.py", True, check_kill_pgroup),
    "close_stdout": ("close_stdout.py", True, check_close_stdout),
    "os_exit": ("os_exit.py", True, check_os_exit),
}
ENV_ALLOW = ("FORGE_TEST_ALLOWED", "CELERY_BROKER_URL", "LANG")


def check_all(results: dict[str, CandidateResult], w: World, lim: Limits,
              cases: list[str]) -> None:
    failures = []
    for case in cases:
        r = results.get(case)
        if r is None:
            failures.append(f"{case}: no result")
            continue
        try:
            CASES[case][2](r, w, lim)
        except AssertionError as exc:
            failures.append(f"{case}: {exc}")
    assert not failures, "\n".join(failures)


def leftover_sandboxes(tag: str) -> list[str]:
    from worker.sandbox.local.parent_dir import sandbox_parent

    return glob.glob(os.path.join(sandbox_parent(), f"forge-h{tag}-*"))


# --------------------------------------------------------------------------- drivers


def test_hostile_lifecycle(world):
    """Every case through run_lifecycle, concurrently, on the local backend."""
    backend = LocalBackend()
    run_id = f"hostile-{world.tag}"
    cases = list(CASES)

    def one(case: str) -> CandidateResult:
        script, network, _ = CASES[case]
        text = render(script, world.config(case))
        task = CandidateTask(
            run_id=run_id, candidate_id=f"h{world.tag}-{case}", name=case,
            script_name=script, script=text, script_sha256=sha256_text(text),
            objective=OBJECTIVE, timeout=TIMEOUT, network=network, env_allow=ENV_ALLOW,
            limits=LIMITS,
        )
        lines: list[str] = []
        return run_lifecycle(backend, task, lines.append)

    watch = ProcWatch()
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = dict(zip(cases, pool.map(one, cases), strict=True))
    elapsed = time.monotonic() - t0
    grew = watch.stop()
    check_all(results, world, LIMITS, cases)
    assert grew < len(cases) * 8 + LIMITS.max_processes * 2, f"process count grew by {grew}"
    assert elapsed < TIMEOUT + 25, f"the competition took {elapsed:.1f}s"
    assert leftover_sandboxes(world.tag) == []
    time.sleep(0.3)
    assert not _marked_pids(world.marker)


def _write_manifest(directory: Path, w: World, cases: list[str], network: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"timeout = {TIMEOUT}", f"network = {'true' if network else 'false'}",
             f"env = {list(ENV_ALLOW)!r}".replace("'", '"'), ""]
    for case in cases:
        script = CASES[case][0]
        (directory / f"{case}.py").write_text(render(script, w.config(case)), "utf-8")
        lines += ["[[candidate]]", f'id = "{case.replace("_", "-")}"', f'name = "{case}"',
                  f'script = "{case}.py"', ""]
    path = directory / "candidates.toml"
    path.write_text("\n".join(lines), "utf-8")
    return path


def test_hostile_through_forge(world):
    """The suite as real competitions through the forge entry point (embedded Celery)."""
    if not FORGE_LEVEL:
        pytest.skip("forge-level hostile run switched off (FORGE_LEVEL = False)")
    from dispatcher import run_forge

    on_cases = [c for c, (_, net, _) in CASES.items() if net]
    off_cases = ["well_behaved", "loopback_off"]
    watch = ProcWatch()
    for cases, network in ((on_cases, True), (off_cases, False)):
        manifest = _write_manifest(world.tmp / f"manifest-{network}", world, cases, network)
        forge = run_forge(
            OBJECTIVE,
            candidates=str(manifest),
            artifacts_dir=str(world.artifacts),
            timeout=TIMEOUT,
            network=network,
        )
        limits = Limits()  # the forge's defaults
        results = {c: forge.result_for(c.replace("_", "-")) for c in cases}
        check_all(results, world, limits, cases)  # type: ignore[arg-type]
    grew = watch.stop()
    assert grew < len(CASES) * 8 + Limits().max_processes * 2, f"process count grew by {grew}"
    time.sleep(0.3)
    assert not _marked_pids(world.marker)
