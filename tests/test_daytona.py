"""The Daytona backend with the real ``daytona`` SDK against the loopback emulator.

Each test checks what a user would see (the result record and log lines) and what the
service saw (the emulator's record): every sandbox created is deleted, and the API key
never reaches a sandbox, a result or a log.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from worker.lifecycle import run_lifecycle
from worker.records import CandidateResult, CandidateTask, Limits, sha256_text
from worker.sandbox.daytona import (
    APP_LABEL,
    CANDIDATE_LABEL,
    NO_KEY,
    NO_SDK,
    OWNER_LABEL,
    RUN_LABEL,
    DaytonaBackend,
)

try:  # tests/ as a package (python -m pytest) or as a plain directory (pytest)
    from tests.daytona_emulator import DaytonaEmulator
except ImportError:
    from daytona_emulator import DaytonaEmulator  # type: ignore[no-redef]

# Every test starts processes (the emulator runs sandbox commands as real processes).
pytestmark = pytest.mark.processes

API_KEY = f"test-key-{secrets.token_hex(12)}"
HOSTILE = "'; rm -rf \"$HOME\" $(touch /tmp/pwned) \n ünïcødé"

WRITE_OBJECTIVE = """\
import sys
with open(sys.argv[2], "w", encoding="utf-8", newline="") as fh:
    fh.write(sys.argv[1])
print("wrote", len(sys.argv[1]), "chars")
"""

ENV_DUMP = """\
import json, os, sys
seen = {"env": dict(os.environ), "cwd": os.getcwd(), "files": sorted(os.listdir("."))}
open(sys.argv[2], "w").write(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def emu() -> Iterator[DaytonaEmulator]:
    with DaytonaEmulator(api_key=API_KEY) as emulator:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DAYTONA_API_KEY", API_KEY)
            mp.setenv("DAYTONA_API_URL", emulator.url)
            mp.setenv("DAYTONA_USE_DEPRECATED_POLLING", "true")
            mp.setenv("NO_PROXY", "127.0.0.1,localhost")
            mp.setenv("FORGE_VISIBLE", "shown")
            yield emulator


@pytest.fixture(scope="module")
def backend(emu: DaytonaEmulator) -> DaytonaBackend:
    return DaytonaBackend(create_timeout=1, backoff_base=0.02, delete_timeout=5)


def make_task(script: str, objective: str = "objective", **kw) -> CandidateTask:
    return CandidateTask(
        run_id=kw.pop("run_id", f"run-{secrets.token_hex(4)}"),
        candidate_id=kw.pop("candidate_id", "cand"),
        name="cand",
        script_name="script.py",
        script=script,
        script_sha256=sha256_text(script),
        objective=objective,
        execution_mode="daytona",
        **kw,
    )


def run(backend: DaytonaBackend, task: CandidateTask) -> tuple[CandidateResult, list[str]]:
    lines: list[str] = []
    result = run_lifecycle(backend, task, lines.append, owner="tester")
    text = json.dumps(result.to_dict()) + "\n".join(lines)
    assert API_KEY not in text
    return result, lines


def test_lifecycle_passes_hostile_objective_byte_for_byte(emu, backend):
    pwned_before = os.path.exists("/tmp/pwned") and os.stat("/tmp/pwned").st_mtime
    task = make_task(WRITE_OBJECTIVE, HOSTILE, network=False)
    result, lines = run(backend, task)

    assert result.success, result.error_message
    assert result.artifact_content == HOSTILE
    assert result.execution_mode == "daytona" and result.exit_code == 0
    assert "wrote" in result.output
    assert (os.path.exists("/tmp/pwned") and os.stat("/tmp/pwned").st_mtime) == pwned_before
    for expected in ("[Daytona] Creating sandbox...", f"[Daytona] Sandbox ready: "
                     f"{result.sandbox_id[:8]}...", "[Daytona] Script uploaded",
                     "[Run] Executing...", "[Run] Exit code: 0", "[Done] Artifact retrieved",
                     "[Daytona] Cleaning up..."):
        assert expected in lines
    execute = next(c for c in emu.calls if c["path"] == "execute"
                   and c["sandbox"] == result.sandbox_id)
    assert shlex.split(execute["command"])[2] == HOSTILE  # what the shell was given
    create = next(c for c in emu.calls if c.get("sandbox") == result.sandbox_id
                  and c["path"] == "create")
    assert create["labels"][RUN_LABEL] == task.run_id
    assert create["labels"][CANDIDATE_LABEL] == "cand"
    assert create["labels"][OWNER_LABEL] == "tester"
    assert create["labels"][APP_LABEL] == "1"
    assert create["networkBlockAll"] is True
    assert create["autoDeleteInterval"] == 0  # ephemeral
    assert create["autoStopInterval"] > task.timeout / 60 and create["ttlMinutes"] > 0
    assert result.sandbox_id in emu.deleted


def test_shell_metacharacters_never_run(emu, backend, tmp_path):
    marker = tmp_path / "pwned"
    objective = f"$(touch {marker}) `touch {marker}`; touch {marker} && echo '"
    result, _ = run(backend, make_task(WRITE_OBJECTIVE, objective))
    assert result.success and result.artifact_content == objective
    assert not marker.exists()


def test_api_key_never_enters_the_sandbox(emu, backend):
    task = make_task(ENV_DUMP, env_allow=("DAYTONA_API_KEY", "DAYTONA_API_URL", "FORGE_VISIBLE"))
    result, _ = run(backend, task)
    assert result.success, result.error_message
    seen = json.loads(result.artifact_content)
    assert seen["env"]["FORGE_VISIBLE"] == "shown"  # the allow-list works...
    assert "DAYTONA_API_KEY" not in seen["env"] and "DAYTONA_API_URL" not in seen["env"]
    assert API_KEY not in result.artifact_content
    create = next(c for c in emu.calls if c.get("sandbox") == result.sandbox_id)
    assert create["env"] == {"FORGE_VISIBLE": "shown"}  # ...and only it reaches the service


def test_large_script_uploads_intact(emu, backend):
    filler = "".join(f"# {secrets.token_hex(60)}\n" for _ in range(2500))  # ~300 KB
    script = filler + (
        "import hashlib, sys\n"
        "data = open(__file__, 'rb').read()\n"
        "open(sys.argv[2], 'w').write(hashlib.sha256(data).hexdigest())\n"
    )
    assert len(script) > 300_000
    result, _ = run(backend, make_task(script))
    assert result.success, result.error_message
    assert result.artifact_content == hashlib.sha256(script.encode()).hexdigest()


def test_rate_limited_create_is_retried_with_backoff(emu, backend):
    emu.set_faults(rate_limit_creates=2)
    result, lines = run(backend, make_task(WRITE_OBJECTIVE))
    assert result.success, result.error_message
    waits = [x for x in lines if x.startswith("[Daytona] Rate limited (429); retrying in ")]
    assert len(waits) == 2
    assert waits[0].endswith("(attempt 2, within the run's wait bound)")
    assert waits[1].endswith("(attempt 3, within the run's wait bound)")
    assert result.timings["refused"] == 2


def test_retry_after_is_honoured_and_503_retried(emu):
    slept: list[float] = []
    patient = DaytonaBackend(create_timeout=1, backoff_base=0.01, sleep=slept.append)
    emu.set_faults(rate_limit_creates=1, retry_after=7, unavailable_creates=1)
    result, lines = run(patient, make_task(WRITE_OBJECTIVE))
    assert result.success, result.error_message
    assert 7 <= slept[0] < 8  # Retry-After, plus a little jitter
    assert slept[1] < 0.05  # our own backoff
    assert any("Service unavailable (503); retrying" in x for x in lines)


def test_rate_limit_is_waited_out_until_the_runs_wait_bound(emu):
    """429s are retried (with backoff) until the run's wait bound, then named clearly."""
    from worker.records import SandboxBudget

    patient = DaytonaBackend(backoff_base=0.2, backoff_cap=0.4)
    emu.set_faults(rate_limit_creates=10_000)
    t0 = time.monotonic()
    result, lines = run(patient, make_task(WRITE_OBJECTIVE, budget=SandboxBudget(slot_wait=2)))
    assert 1.5 <= time.monotonic() - t0 < 8
    assert not result.success
    assert result.error_message.startswith(
        "Sandbox creation failed: no Daytona sandbox within the run's wait bound of 2s")
    assert "Rate limited" not in result.error_message or "429" in result.error_message
    assert "forge reap" in result.error_message and "raise the Daytona account's tier" in \
        result.error_message
    assert sum(x.startswith("[Daytona] Rate limited (429); retrying") for x in lines) >= 3


def test_create_500_fails_cleanly(emu, backend):
    emu.set_faults(fail_creates=1)
    created = len(emu.created)
    result, lines = run(backend, make_task(WRITE_OBJECTIVE))
    assert not result.success and result.sandbox_id is None
    assert result.error_message.startswith("Sandbox creation failed")
    assert "Runner exploded" in result.error_message
    assert lines[-1] == f"[Error] {result.error_message}"
    assert len(emu.created) == created


def test_sandbox_that_never_starts_times_out_and_is_deleted(emu, backend):
    emu.set_faults(never_start=1)
    t0 = time.monotonic()
    result, _ = run(backend, make_task(WRITE_OBJECTIVE))
    assert time.monotonic() - t0 < 10
    assert not result.success
    assert result.error_message.startswith("Sandbox creation failed: not started within 1s")
    assert result.sandbox_id and result.sandbox_id in emu.deleted
    assert f"sandbox {result.sandbox_id} deleted" in result.error_message


def test_sandbox_in_error_state_is_deleted(emu, backend):
    emu.set_faults(error_start=1)
    created = len(emu.created)
    result, _ = run(backend, make_task(WRITE_OBJECTIVE))
    assert not result.success and "error state" in result.error_message
    assert result.error_message.endswith("(1 stray sandbox(es) deleted)")
    assert emu.created[created:] and emu.created[created] in emu.deleted


def test_create_answer_lost_in_timeout_sandbox_still_deleted(emu, backend):
    emu.set_faults(create_latency=2.5)  # the POST outlives the create timeout
    created = len(emu.created)
    result, _ = run(backend, make_task(WRITE_OBJECTIVE))
    assert not result.success and result.error_message.startswith("Sandbox creation failed")
    stray = emu.created[created:]
    assert len(stray) == 1 and stray[0] in emu.deleted
    assert "1 stray sandbox(es) deleted" in result.error_message


def test_failed_delete_is_a_warning_not_a_failure(emu, backend):
    emu.set_faults(fail_deletes=-1)
    result, lines = run(backend, make_task(WRITE_OBJECTIVE))
    assert result.success, result.error_message
    assert result.warnings and result.warnings[0].startswith(
        f"Cleanup failed for sandbox {result.sandbox_id}")
    assert any(x.startswith("[Warn] Cleanup failed") for x in lines)
    assert result.sandbox_id in emu.alive()
    emu.reset_faults()
    backend.delete_sdk_sandbox(backend.client().get(result.sandbox_id))


def test_transient_delete_failure_is_retried(emu, backend):
    emu.set_faults(fail_deletes=1)
    result, _ = run(backend, make_task(WRITE_OBJECTIVE))
    assert result.success and result.warnings == []
    assert result.sandbox_id in emu.deleted


def _alive_with(marker: str) -> list[int]:
    import glob

    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if marker.encode() in open(path, "rb").read():
                found.append(int(path.split("/")[2]))
        except OSError:
            pass
    return found


def test_exec_timeout_is_a_timed_out_result_and_the_sandbox_is_deleted(emu, backend):
    """The daemon ends the command at the deadline (408): the product's part is the
    result it makes of that and deleting the sandbox, whatever the daemon left running."""
    result, lines = run(backend, make_task("import time\ntime.sleep(30)\n", timeout=1))
    assert result.timed_out and result.exit_code is None and not result.success
    assert result.error_message == "Execution timed out after 1s (sandbox killed)"
    assert result.output == ""  # nothing came back from a killed command
    assert "[Daytona] Cleaning up..." in lines
    assert result.sandbox_id in emu.deleted
    execs = [c for c in emu.calls if c["path"] == "execute" and c["sandbox"] == result.sandbox_id]
    assert [c["timeout"] for c in execs] == [1]  # the candidate's deadline, to the daemon


def test_a_failing_daemon_is_an_execution_failure_and_the_sandbox_is_deleted(emu, backend):
    emu.set_faults(fail_execs=1)
    result, lines = run(backend, make_task(WRITE_OBJECTIVE))
    assert not result.success and not result.timed_out
    assert result.error_message.startswith("Execution failed: "), result.error_message
    assert "Runner exploded mid-command" in result.error_message
    assert result.sandbox_id and result.sandbox_id in emu.deleted
    assert any(x.startswith("[Error] Execution failed") for x in lines)


def test_a_daemon_that_misses_the_deadline_is_ended_by_deleting_the_sandbox(emu, backend,
                                                                            tmp_path):
    """The daemon neither kills the command at its deadline nor answers (the emulator is
    told to miss it): the worker gives up on its own (the SDK's request timeout is the
    deadline + 5 s), calls it a timeout, and deletes the sandbox, which is what ends the
    candidate and the child it left behind. Without that delete they would run on."""
    marker = f"forge-daytona-straggler-{secrets.token_hex(6)}"
    started = tmp_path / "started"
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen(['sh', '-c', 'touch {started}; sleep 300', '{marker}'])\n"
        "time.sleep(300)\n"
    )
    import threading

    seen: list[int] = []  # the straggler, seen alive while the candidate ran
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not seen:
            seen.extend(_alive_with(marker))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    emu.set_faults(exec_misses_deadline=True)
    t0 = time.monotonic()
    try:
        result, _ = run(backend, make_task(script, timeout=1))
    finally:
        done.set()
        watcher.join()
    waited = time.monotonic() - t0
    assert started.exists() and seen, "the straggler never ran: nothing was tested"
    assert result.timed_out and not result.success, result.error_message
    assert result.error_message == "Execution timed out after 1s (sandbox killed)"
    assert result.sandbox_id in emu.deleted
    assert waited < 3 * (1 + 5), waited  # the SDK's request timeout, with headroom
    deadline = time.monotonic() + 5
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with(marker) == [], "the candidate's child outlived its deleted sandbox"


def test_daemon_side_timeout_cap(emu, backend):
    emu.set_faults(exec_timeout_cap=1)
    result, _ = run(backend, make_task("import time\ntime.sleep(30)\n", timeout=20))
    assert result.timed_out and not result.success


def test_missing_artifact_and_nonzero_exit(emu, backend):
    result, _ = run(backend, make_task("print('nothing written')\n"))
    assert result.error_message == ("Artifact missing: the script exited 0 but wrote "
                                    "no output file")
    result, lines = run(backend, make_task("import sys\nprint('boom')\nsys.exit(3)\n"))
    assert result.exit_code == 3 and "boom" in result.output
    assert result.error_message == "Script exited with code 3"
    assert "[Run] Exit code: 3" in lines


def test_output_and_artifact_are_capped(emu, backend):
    script = (
        "import sys\n"
        "sys.stdout.write('x' * 200000 + 'THE-END')\n"
        "open(sys.argv[2], 'w').write('a' * 5000)\n"
    )
    limits = Limits(output_bytes=1000, artifact_bytes=1024)
    result, lines = run(backend, make_task(script, limits=limits))
    assert result.success, result.error_message
    assert result.output.endswith("THE-END") and result.output_dropped_bytes == 199007
    assert result.artifact_truncated and result.artifact_content == "a" * 1024
    assert any(x.startswith("[Warn] Output capped") for x in lines)


def test_slow_daemon_still_within_deadline(emu, backend):
    emu.set_faults(exec_delay=0.3, create_latency=0.2, start_delay=0.3)
    result, _ = run(backend, make_task(WRITE_OBJECTIVE, timeout=5))
    assert result.success, result.error_message


def test_missing_key_and_wrong_key(emu, monkeypatch):
    monkeypatch.delenv("DAYTONA_API_KEY")
    result, _ = run(DaytonaBackend(), make_task(WRITE_OBJECTIVE))
    assert result.error_message == f"Sandbox creation failed: {NO_KEY}"

    monkeypatch.setenv("DAYTONA_API_KEY", "test-key-wrong")
    failures = emu.auth_failures
    result, _ = run(DaytonaBackend(), make_task(WRITE_OBJECTIVE))
    assert result.error_message.startswith("Sandbox creation failed")
    assert "test-key-wrong" not in result.error_message
    assert emu.auth_failures == failures + 1


def test_sdk_not_installed(emu, monkeypatch):
    monkeypatch.setitem(sys.modules, "daytona", None)
    result, _ = run(DaytonaBackend(), make_task(WRITE_OBJECTIVE))
    assert result.error_message == f"Sandbox creation failed: {NO_SDK}"


def test_one_client_reused_across_sandboxes(emu, backend):
    client = backend.client()
    run(backend, make_task(WRITE_OBJECTIVE))
    run(backend, make_task(WRITE_OBJECTIVE))
    assert backend.client() is client


def test_reap_and_alive_sandboxes(emu, backend):
    from worker.sandbox.base import SandboxRequest

    def log(_: str) -> None:
        pass

    boxes = [backend.create(SandboxRequest(run_id=f"reap-{i}", candidate_id="c", timeout=5),
                            log) for i in range(3)]
    try:
        assert backend.alive_sandboxes("reap-0") == 1
        emu.age(boxes[0].id, 7200)
        emu.age(boxes[1].id, 7200)
        listed = backend.reap(3600, dry_run=True)
        assert sorted(e["id"] for e in listed) == sorted([boxes[0].id, boxes[1].id])
        assert not any(e["deleted"] for e in listed)
        assert boxes[0].id in emu.alive() and boxes[1].id in emu.alive()
        assert listed[0]["run_id"].startswith("reap-") and listed[0]["age_seconds"] >= 7200

        reaped = backend.reap(3600)
        assert all(e["deleted"] and e["error"] is None for e in reaped) and len(reaped) == 2
        assert backend.alive_sandboxes("reap-0") == 0
        assert backend.alive_sandboxes("reap-2") == 1
    finally:
        boxes[2].delete()
    assert backend.alive_sandboxes("reap-2") == 0


def test_compat_run_candidate_in_daytona(emu, tmp_path, monkeypatch):
    import worker.sandbox
    from dispatcher.daytona_compat import get_daytona_config, run_candidate_in_daytona

    monkeypatch.setattr(worker.sandbox, "_backends", {})  # no client left bound to emu

    assert get_daytona_config() == (API_KEY, emu.url)
    script = tmp_path / "agent.py"
    script.write_text(WRITE_OBJECTIVE)
    out = tmp_path / "out" / "post.md"
    seen: list[tuple[str, str]] = []
    result = run_candidate_in_daytona("alpha", str(script), HOSTILE, str(out),
                                      lambda cid, msg: seen.append((cid, msg)))
    assert result.success, result.error_message
    assert out.read_text(encoding="utf-8") == HOSTILE
    assert seen and all(cid == "alpha" for cid, _ in seen)
    assert ("alpha", "[Daytona] Connecting...") in seen or any(
        m == "[Daytona] Creating sandbox..." for _, m in seen)


def test_importing_the_backend_does_not_import_the_sdk():
    code = "import sys, worker.sandbox.daytona; assert 'daytona' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_concurrent_candidates_share_one_client(emu, backend):
    """Worker threads (embedded mode) share the backend; faults hit some of them."""
    from concurrent.futures import ThreadPoolExecutor

    emu.set_faults(rate_limit_creates=2, never_start=1)
    tasks = [make_task(WRITE_OBJECTIVE, f"objective {i}", candidate_id=f"c{i}")
             for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda t: run(backend, t)[0], tasks))
    failed = [r for r in results if not r.success]
    assert len(failed) == 1 and "not started within" in failed[0].error_message
    for task, result in zip(tasks, results, strict=True):
        if result.success:
            assert result.artifact_content == task.objective


def test_seed_get_daytona_config_without_a_key_returns_the_default_url(tmp_path):
    """The seed's contract: ``(None, "https://app.daytona.io/api")`` with no key set."""
    code = ("from worker import get_daytona_config, is_daytona_configured;"
            "print(repr(get_daytona_config()), is_daytona_configured())")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == "(None, 'https://app.daytona.io/api') False"
    env["DAYTONA_API_KEY"] = "k-123"  # with a key: configured, same default URL
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == "('k-123', 'https://app.daytona.io/api') True"


def test_seed_run_candidate_in_daytona_without_a_key_says_exactly_what_the_seed_says(
        tmp_path, monkeypatch):
    from dispatcher.daytona_compat import run_candidate_in_daytona

    monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
    script = tmp_path / "agent.py"
    script.write_text(WRITE_OBJECTIVE)
    out = tmp_path / "post.md"
    seen: list[tuple[str, str]] = []
    result = run_candidate_in_daytona("alpha", str(script), "obj", str(out),
                                      lambda cid, msg: seen.append((cid, msg)))
    assert result.success is False
    assert result.error_message == "Daytona API key not configured"
    assert seen == [("alpha", "[Error] Daytona API key not configured (set DAYTONA_API_KEY)")]
    assert not out.exists()


def test_seed_run_candidate_in_daytona_refuses_a_bad_objective_or_timeout(emu, tmp_path):
    from dispatcher.daytona_compat import run_candidate_in_daytona

    script = tmp_path / "agent.py"
    script.write_text(WRITE_OBJECTIVE)
    created = len(emu.created)
    for objective, timeout, words in (("a\x00b", 60, "contains a NUL character"),
                                      ("obj", 0, "timeout must be a whole number")):
        result = run_candidate_in_daytona("alpha", str(script), objective,
                                          str(tmp_path / "post.md"), timeout=timeout)
        assert result.success is False and words in result.error_message
    assert len(emu.created) == created  # refused before any sandbox was made
