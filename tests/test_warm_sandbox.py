"""Warm sandboxes: the next candidate's sandbox, set up while the current one runs.

A candidate in a warm sandbox must see exactly what it would see in a cold one (the
same argv, paths, globals, modules, open files, traceback and exit code), a warm
sandbox serves only a candidate of the same shape, and none outlives its idle time or
its process. Each comparison runs the same script cold (``FORGE_WARM_SANDBOXES=0``) as
the positive control.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.procs import ROOT, processes_with
from worker.lifecycle import run_lifecycle
from worker.records import CandidateTask, Limits, sha256_text
from worker.sandbox.base import SandboxRequest
from worker.sandbox.local import LocalBackend, bwrap, owner, warm
from worker.sandbox.local.parent_dir import sandbox_parent

# Every test starts local sandboxes (bubblewrap, slirp4netns); tests/markers.py.
pytestmark = pytest.mark.processes

WARM_LINE = "[Local] Warm sandbox"
SMALL = Limits(memory_mb=256, max_processes=32, max_file_mb=8, output_bytes=16384,
               artifact_bytes=16384)

STATE = """
    import json, os, resource, sys
    state = {
        "argv": sys.argv, "orig_argv": sys.orig_argv, "path": sys.path,
        "file": __file__, "name": __name__, "doc": __doc__, "cached": __cached__,
        "globals": sorted(globals()), "loader": [type(__loader__).__name__, __loader__.name,
                                                  __loader__.path],
        "spec": repr(__spec__), "modules": sorted(sys.modules), "cwd": os.getcwd(),
        "pids": [os.getpid(), os.getppid()], "fds": sorted(os.listdir("/proc/self/fd")),
        "env": dict(os.environ), "flags": repr(sys.flags), "executable": sys.executable,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "cgroup": open("/proc/self/cgroup").read().count("\\n"),
    }
    open(sys.argv[2], "w").write(json.dumps(state))
    import time
    time.sleep(0.4)  # long enough for the next candidate's sandbox to be made meanwhile
"""

FAILS = """
    def deep():
        raise ValueError("boom")
    deep()
"""


def require_bwrap() -> None:
    probe = bwrap.probe()
    assert probe.ok, f"bubblewrap unavailable ({probe.reason}); fix: apt-get install bubblewrap"


def task(script: str, cid: str, timeout: int = 7) -> CandidateTask:
    script = textwrap.dedent(script)
    return CandidateTask(
        run_id="r-warm", candidate_id=cid, name=cid, script_name="s.py", script=script,
        script_sha256=sha256_text(script), objective="warm objective", timeout=timeout,
        limits=SMALL,
    )


def run(t: CandidateTask):
    lines: list[str] = []
    result = run_lifecycle(LocalBackend(), t, lines.append)
    return result, lines


def warm_roots(pid: int | None = None) -> set[str]:
    """The warm sandboxes of process ``pid`` (this one): others run tests beside us."""
    me = owner.identity(os.getpid() if pid is None else pid)
    found = set()
    for root in glob.glob(os.path.join(sandbox_parent(), "forge-warm-*")):
        try:
            with open(os.path.join(root, owner.OWNER_FILE)) as fh:
                if fh.read().strip() == me:
                    found.add(root)
        except OSError:
            pass
    return found


def wait_for(check, deadline: float = 20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    return check()


def test_a_warm_candidate_sees_what_a_cold_one_sees(monkeypatch):
    """Same script, cold then warm: identical state, traceback and exit code."""
    require_bwrap()
    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "0")
    cold_state, cold_lines = run(task(STATE, "cold-state"))
    cold_fail, _ = run(task(FAILS, "cold-fail"))
    assert not any(WARM_LINE in x for x in cold_lines)

    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "1")
    run(task(STATE, "warm-up"))  # lets its sandbox go: the next one is made meanwhile
    warm_state, warm_lines = run(task(STATE, "warm-state"))
    warm_fail, fail_lines = run(task(FAILS, "warm-fail"))
    assert any(WARM_LINE in x for x in warm_lines), warm_lines
    assert any(WARM_LINE in x for x in fail_lines), fail_lines

    assert cold_state.success and warm_state.success, (cold_state.output, warm_state.output)
    import json

    cold, warm = json.loads(cold_state.artifact_content), json.loads(warm_state.artifact_content)
    assert warm == cold
    assert cold["fds"] == ["0", "1", "2", "3"]  # nothing of the worker's stays open
    assert not cold_fail.success and not warm_fail.success
    assert warm_fail.error_message == cold_fail.error_message
    assert "exited with code 1" in warm_fail.error_message
    assert warm_fail.output == cold_fail.output
    assert 'in deep\n    raise ValueError("boom")' in warm_fail.output
    assert "zygote" not in warm_fail.output


@pytest.mark.parametrize("argv", [
    ["python3", "-m", "mod", "x y"],
    ["python3", "-m", "nosuchmodule"],
    ["python3", "/sandbox/missing.py"],
    ["python3", "/sandbox/mod.py", "a"],
])
def test_module_mode_and_errors_match_a_cold_start(argv, monkeypatch):
    """Through the backend: ``-m``, a missing module or file, run warm and cold."""
    require_bwrap()
    backend = LocalBackend()
    request = SandboxRequest(run_id="r-warm-api", candidate_id="m", timeout=9, limits=SMALL)
    module = b"import sys\nprint(__name__, sys.argv, sys.path[0], __spec__.name)\n"

    def once(expect_warm: bool | None, command: list[str] = argv):
        lines: list[str] = []
        sandbox = backend.create(request, lines.append)
        try:
            if expect_warm is not None:
                assert any(WARM_LINE in x for x in lines) is expect_warm, lines
            sandbox.upload(module, "/sandbox/mod.py", 5)
            ran = sandbox.exec(command, 9, 16384)
            return ran.exit_code, ran.output
        finally:
            sandbox.delete()

    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "0")
    cold = once(False)
    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "1")
    # Warm or not, a command running 0.4 s has the pool make the next sandbox meanwhile.
    once(None, ["python3", "-c", "import time; time.sleep(0.4)"])
    warm = once(True)
    assert warm == cold
    assert cold[0] in (0, 1, 2), cold


def test_another_shape_starts_cold(monkeypatch):
    """A warm sandbox is made for one shape (deadline, limits, network, environment)."""
    require_bwrap()
    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "1")
    run(task(STATE, "shape-a", timeout=5))
    _, other = run(task(STATE, "shape-b", timeout=6))
    _, again = run(task(STATE, "shape-b2", timeout=6))
    assert not any(WARM_LINE in x for x in other), other
    assert any(WARM_LINE in x for x in again), again  # the positive control


def test_a_setting_changed_since_starts_cold(monkeypatch):
    """A warm sandbox made with cgroups is not used once ``FORGE_NO_CGROUPS=1``."""
    require_bwrap()
    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "1")
    first, _ = run(task(STATE, "set-a"))
    assert "memory cgroup" in first.isolation, first.isolation
    monkeypatch.setenv("FORGE_NO_CGROUPS", "1")
    second, lines = run(task(STATE, "set-b"))
    assert not any(WARM_LINE in x for x in lines), lines
    assert "memory cgroup" not in second.isolation, second.isolation
    third, lines = run(task(STATE, "set-c"))
    assert any(WARM_LINE in x for x in lines), lines  # the positive control
    assert "memory cgroup" not in third.isolation, third.isolation


def test_a_candidate_that_ends_at_once_has_none_made_for_the_next(monkeypatch):
    """Under ``WARM_AFTER``: making the next sandbox beside it would only cost CPU.

    ``WARM_AFTER`` is raised to 1.5 s here so that "at once" holds on a loaded machine
    too (at 0.1 s, a quick candidate slowed past it by the rest of the suite had its
    successor's sandbox made, as it should)."""
    require_bwrap()
    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "1")
    monkeypatch.setattr(warm, "WARM_AFTER", 1.5)
    slow = "import sys, time\nopen(sys.argv[2], 'w').write('# ok')\ntime.sleep(2.5)\n"
    quick = "import sys\nopen(sys.argv[2], 'w').write('# ok')\n"
    run(task(slow, "quick-0", timeout=4))  # past WARM_AFTER: the next is made meanwhile
    before = warm_roots()
    _, lines = run(task(quick, "quick-1", timeout=4))
    assert any(WARM_LINE in x for x in lines), lines  # the positive control
    time.sleep(0.5)
    _, lines = run(task(quick, "quick-2", timeout=4))
    assert not any(WARM_LINE in x for x in lines), lines
    assert not (warm_roots() - before)


def test_off_makes_none(monkeypatch):
    require_bwrap()
    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "0")
    before = warm_roots()
    _, first = run(task(STATE, "off-1"))
    _, second = run(task(STATE, "off-2"))
    assert not any(WARM_LINE in x for x in first + second)
    assert warm_roots() <= before


def test_a_hanging_warm_candidate_meets_its_deadline(monkeypatch):
    """The deadline counts from the candidate's start and kills its whole sandbox."""
    require_bwrap()
    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "1")
    hang = "import os, time\nos.fork() or time.sleep(600)\ntime.sleep(600)\n"
    run(task(hang, "hang-1", timeout=2))
    t0 = time.monotonic()
    r, lines = run(task(hang, "hang-2", timeout=2))
    assert any(WARM_LINE in x for x in lines), lines
    assert not r.success and "timed out" in r.error_message.lower(), r.error_message
    assert time.monotonic() - t0 < 30
    assert not glob.glob("/sys/fs/cgroup/*/**/forge-" + r.sandbox_id, recursive=True)


def test_an_unused_warm_sandbox_is_removed_after_its_idle_time(monkeypatch):
    require_bwrap()
    monkeypatch.setenv("FORGE_WARM_SANDBOXES", "1")
    monkeypatch.setenv("FORGE_WARM_IDLE", "1")
    before = warm_roots()
    run(task(STATE, "idle-1", timeout=8))
    made = wait_for(lambda: warm_roots() - before)
    assert made, "no warm sandbox was made"
    root = next(iter(made))
    assert wait_for(lambda: processes_with(root)), "the warm sandbox has no processes"
    assert wait_for(lambda: not os.path.exists(root)), f"{root} outlived its idle time"
    assert wait_for(lambda: not processes_with(root)), processes_with(root)


def test_a_warm_sandbox_goes_when_its_process_ends(tmp_path):
    """A process that ran a candidate and exits takes its warm sandbox with it."""
    require_bwrap()
    program = textwrap.dedent("""
        import glob, os, sys, time
        from worker.lifecycle import run_lifecycle
        from worker.records import CandidateTask, sha256_text
        from worker.sandbox.local import LocalBackend
        from worker.sandbox.local.parent_dir import sandbox_parent
        s = "import sys, time; open(sys.argv[2], 'w').write('# ok'); time.sleep(0.4)"
        t = CandidateTask(run_id="r-exit", candidate_id="c", name="c", script_name="s.py",
                          script=s, script_sha256=sha256_text(s), objective="o", timeout=9)
        assert run_lifecycle(LocalBackend(), t, print).success
        from tests.test_warm_sandbox import warm_roots
        end = time.monotonic() + 20
        while not warm_roots() and time.monotonic() < end:
            time.sleep(0.05)
        print("WARM", *warm_roots())
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "FORGE_WARM_SANDBOXES": "1",
                                            "FORGE_WARM_IDLE": "600"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    shown = [x for x in done.stdout.splitlines() if x.startswith("WARM")]
    made = set(shown[0].split()[1:])
    assert made, done.stdout  # the positive control: it had one
    for root in made:
        assert not os.path.exists(root)
        assert not processes_with(root)


def test_a_process_ending_while_a_warm_sandbox_is_made_waits_and_removes_it():
    """The race: the process ends (atexit; a pool process's shutdown) while its warm
    thread is still making a sandbox. The drain waits for the making, and the maker
    removes what it made: nothing of it outlives the process."""
    require_bwrap()
    program = textwrap.dedent("""
        import threading, time
        from worker.lifecycle import run_lifecycle
        from worker.records import CandidateTask, sha256_text
        from worker.sandbox.local import LocalBackend
        from worker.sandbox.local.bwrap_sandbox import BwrapSandbox
        making = threading.Event()
        real = BwrapSandbox.make_warm

        def make_warm(self, *args):  # made, but its maker not yet done as the process ends
            real(self, *args)
            print("MAKING", self.root, flush=True)
            making.set()
            time.sleep(0.5)

        BwrapSandbox.make_warm = make_warm
        s = "import sys, time; open(sys.argv[2], 'w').write('# ok'); time.sleep(0.4)"
        t = CandidateTask(run_id="r-exit", candidate_id="c", name="c", script_name="s.py",
                          script=s, script_sha256=sha256_text(s), objective="o", timeout=9)
        assert run_lifecycle(LocalBackend(), t, print).success
        assert making.wait(20)
        print("EXITING", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "FORGE_WARM_SANDBOXES": "1",
                                            "FORGE_WARM_IDLE": "600"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    [root] = [x.split()[1] for x in lines if x.startswith("MAKING")]
    assert "EXITING" in lines  # it ended while the maker was still at work
    assert not os.path.exists(root), f"{root} outlived its process"
    assert not processes_with(root), processes_with(root)
