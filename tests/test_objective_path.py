"""The objective's path into both backends: byte for byte, as one argv element.

The objective comes from whoever starts a run (or publishes a task). It reaches the
candidate as ``sys.argv[1]`` and nothing ever parses it: the local sandbox starts the
candidate from an argv list, Daytona's daemon runs a shell command line in which every
argument is quoted. Each nasty objective here must come back exactly, with nothing run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from tests.daytona_emulator import DaytonaEmulator
from worker.lifecycle import candidate_command, run_lifecycle, shell_command
from worker.records import CandidateTask, Limits, sha256_text
from worker.sandbox.daytona import DaytonaBackend
from worker.sandbox.local import LocalBackend

pytestmark = pytest.mark.processes  # sandboxes, and the emulator's commands

CANARY = f"/tmp/forge-objective-canary-{secrets.token_hex(6)}"
OBJECTIVES = {
    "shell": f"x; touch {CANARY}; $(touch {CANARY}) `touch {CANARY}` && touch {CANARY}",
    "quotes": "it's \"quoted\" \\' \\\" '' \"\"",
    "newlines": f"line one\ntouch {CANARY}\n\r\ttabbed",
    "dash": "--version",
    "glob": "* ?.py [a-z]* ~ ~root $HOME ${PATH} %s {}",
    "unicode": "ünïcødé 🤖 AI Events in 東京 \u200b",
    "spaces": "   leading and trailing   ",
}
ECHO = """\
import sys
with open(sys.argv[2], "w", encoding="utf-8", newline="") as fh:
    fh.write(repr(sys.argv[1:2]) + "\\n" + str(len(sys.argv)))
"""


def task(objective: str, mode: str) -> CandidateTask:
    return CandidateTask(
        run_id="objective-path", candidate_id=f"obj-{secrets.token_hex(3)}", name="echo",
        script_name="echo.py", script=ECHO, script_sha256=sha256_text(ECHO),
        objective=objective, timeout=30, network=False, execution_mode=mode,
        limits=Limits(memory_mb=256, max_processes=32, max_file_mb=8))


@pytest.fixture(scope="module")
def daytona() -> Iterator[DaytonaBackend]:
    key = f"test-key-{secrets.token_hex(8)}"
    with DaytonaEmulator(api_key=key) as emulator, pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAYTONA_API_KEY", key)
        mp.setenv("DAYTONA_API_URL", emulator.url)
        mp.setenv("DAYTONA_USE_DEPRECATED_POLLING", "true")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield DaytonaBackend(create_timeout=10, backoff_base=0.02, delete_timeout=5)


def test_the_candidate_command_is_the_contract():
    from worker.records import ProjectRef

    assert candidate_command("/w", "an objective") == [
        "python3", "/w/script.py", "an objective", "/w/discord_post.md"]
    assert candidate_command("/w", "o", ProjectRef(sha256="s", entry="main.py")) == [
        "python3", "/w/main.py", "o", "/w/discord_post.md"]
    assert candidate_command("/w", "o", ProjectRef(sha256="s", module="alpha")) == [
        "python3", "-m", "alpha", "o", "/w/discord_post.md"]
    assert shell_command(["python3", "a b", "it's"]) == "python3 'a b' 'it'\"'\"'s'"


@pytest.mark.parametrize("mode", ["local", "daytona"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_arrives_byte_for_byte_and_runs_nothing(name, mode, request):
    objective = OBJECTIVES[name]
    backend = LocalBackend() if mode == "local" else request.getfixturevalue("daytona")
    result = run_lifecycle(backend, task(objective, mode), lambda _line: None)
    assert result.success, (result.error_message, result.output)
    assert result.artifact_content == f"{[objective]!r}\n3"  # one argv element, and two more
    assert result.output == ""  # the script prints nothing, and nothing is made up
    assert not os.path.exists(CANARY), "the objective was run as a command"
