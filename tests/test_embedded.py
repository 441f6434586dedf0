"""Embedded mode end to end: an in-process Celery worker runs the real chord."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from dispatcher import run_forge
from tests.manifests import FIXTURES, write_manifest
from tests.procs import processes_with

# Every test starts processes (embedded runs start local sandboxes); tests/markers.py.
pytestmark = pytest.mark.processes

HOSTILE = "'; rm -rf \"$HOME\" $(touch /tmp/pwned) \n ünïcødé"


def test_examples_run_crash_is_a_failed_result_and_files_follow_the_contract(tmp_path):
    lines: list[tuple[str, str]] = []
    result = run_forge("Say hello", log_callback=lambda c, m: lines.append((c, m)),
                       candidates=str(FIXTURES / "basic"), artifacts_dir=str(tmp_path),
                       run_id="emb-1", post=False)
    by_id = {r.candidate_id: r for r in result.results}
    assert set(by_id) == {"echo-1", "echo-2", "crash"}
    assert by_id["echo-1"].success and by_id["echo-2"].success
    crash = by_id["crash"]
    assert not crash.success and crash.exit_code == 1
    assert crash.error_message == "Script exited with code 1"
    assert "ZeroDivisionError" in crash.output
    assert result.winner_id in {"echo-1", "echo-2", None}
    run = tmp_path / "emb-1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run_id"] == "emb-1" and summary["execution_mode"] == "local"
    assert {c["id"] for c in summary["candidates"]} == set(by_id)
    assert {s["candidate_id"] for s in summary["scores"]} == set(by_id)
    for cid in by_id:
        assert json.loads((run / cid / "result.json").read_text())["candidate_id"] == cid
        assert (run / cid / "output.log").is_file()
    assert (run / "echo-1" / "discord_post.md").read_text() == "Say hello"
    # Lifecycle messages reached the callback as they happened, in order, per candidate.
    echo = [m for c, m in lines if c == "echo-1"]
    assert echo[0] == "[Run] Starting..."
    assert "[Run] Executing..." in echo and echo[-1].startswith("[Done] ")
    assert ("crash", "[Error] Script exited with code 1") in lines


def test_hostile_objective_reaches_the_candidate_byte_for_byte(tmp_path):
    if os.path.exists("/tmp/pwned"):
        os.remove("/tmp/pwned")
    manifest = write_manifest(tmp_path / "c", {
        "echo": (FIXTURES / "basic" / "echo.py").read_text()})
    result = run_forge(HOSTILE, candidates=str(manifest), artifacts_dir=str(tmp_path / "a"),
                       run_id="hostile-1", post=False)
    echo = result.results[0]
    assert echo.success, echo.error_message
    assert (tmp_path / "a" / "hostile-1" / "echo" / "discord_post.md").read_bytes() == \
        HOSTILE.encode("utf-8")
    assert json.loads((tmp_path / "a" / "hostile-1" / "summary.json").read_text())[
        "objective"] == HOSTILE
    assert not os.path.exists("/tmp/pwned")
    assert Path(os.path.expanduser("~")).is_dir()


def test_a_candidate_past_its_deadline_is_killed_with_its_child(tmp_path):
    marker = f"sleepy-{uuid.uuid4().hex}"
    manifest = write_manifest(tmp_path / "c", {
        "sleepy": (FIXTURES / "basic" / "sleepy.py").read_text(),
        "echo": (FIXTURES / "basic" / "echo.py").read_text()})
    result = run_forge(marker, candidates=str(manifest), artifacts_dir=str(tmp_path / "a"),
                       timeout=3, post=False)
    by_id = {r.candidate_id: r for r in result.results}
    sleepy = by_id["sleepy"]
    assert sleepy.timed_out and not sleepy.success
    assert "timed out after 3s" in sleepy.error_message
    assert "[Sleepy] started a child" in sleepy.output
    assert by_id["echo"].success  # the run carried on
    assert processes_with(marker) == []  # neither the script nor its child survived
