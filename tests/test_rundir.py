"""The run directory: the contract's files, written atomically and idempotently."""

from __future__ import annotations

import builtins
import json
import os

import pytest

from worker.records import CandidateInfo, CandidateResult, ForgeResult, Score
from worker.rundir import list_runs, read_summary, write_run_dir


def forge_result(run_id: str = "run-1", winner_score: float = 80.0) -> ForgeResult:
    ok = CandidateResult(candidate_id="good", success=True, output="[Good] ok\n",
                         artifact_content="# Post\n\n**Event**\n", runtime_seconds=0.5,
                         exit_code=0, worker="w1@h")
    bad = CandidateResult(candidate_id="bad", output="Traceback ...\nZeroDivisionError\n",
                          error_message="Script exited with code 1", exit_code=1)
    return ForgeResult(
        run_id=run_id, objective="obj \u00fc", timestamp="2026-11-26T09:00:00+00:00",
        execution_mode="local",
        candidates=[CandidateInfo(id="good", name="Good", artifact="good/discord_post.md"),
                    CandidateInfo(id="bad", name="Bad")],
        scores=[Score(candidate_id="good", total_score=winner_score, qualified=True, rank=1),
                Score(candidate_id="bad", qualified=False, rank=2,
                      disqualified_reason="gate exit_ok: exit code 1")],
        winner_id="good", winner_score=winner_score, winner_artifact="# Post\n\n**Event**\n",
        results=[ok, bad])


def test_summary_json_is_the_summary_dict_one_candidate_per_line(tmp_path):
    """summary.json, encoded item by item, parses to exactly summary_dict (no bulk)."""
    from worker.rundir import summary_dict

    result = forge_result()
    result.notes = ["a note"]
    run = write_run_dir(result, tmp_path)
    text = (run / "summary.json").read_text("utf-8")
    assert json.loads(text) == summary_dict(result)
    assert "output" not in json.loads(text)["results"][0]
    lines = text.splitlines()
    assert sum(1 for line in lines if line.lstrip().startswith('{"candidate_id"')) == 4
    assert read_summary(tmp_path, "run-1") == ForgeResult.from_dict(summary_dict(result))


def snapshot(path):
    return {str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_contract_files_and_fields(tmp_path):
    run = write_run_dir(forge_result(), tmp_path)
    assert run == tmp_path / "run-1"
    summary = json.loads((run / "summary.json").read_text())
    for key in ("run_id", "objective", "timestamp", "execution_mode", "candidates", "scores",
                "winner_id", "winner_score", "winner_artifact", "artifacts_dir"):
        assert key in summary
    assert summary["scores"][0]["candidate_id"] == "good"
    assert "quality_details" in summary["scores"][0]
    for cid in ("good", "bad"):
        rec = json.loads((run / cid / "result.json").read_text())
        for key in ("candidate_id", "sandbox_id", "success", "output", "artifact_content",
                    "runtime_seconds", "error_message", "execution_mode", "exit_code",
                    "timed_out", "started_at", "finished_at", "worker"):
            assert key in rec
        assert (run / cid / "output.log").read_text() == rec["output"]
    assert (run / "good" / "discord_post.md").read_text() == "# Post\n\n**Event**\n"
    assert not (run / "bad" / "discord_post.md").exists()
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    assert read_summary(tmp_path, "run-1").winner_id == "good"
    assert [r.run_id for r in list_runs(tmp_path)] == ["run-1"]


def test_rewriting_the_same_result_changes_nothing(tmp_path):
    run = write_run_dir(forge_result(), tmp_path)
    before = snapshot(run)
    write_run_dir(forge_result(), tmp_path)
    assert snapshot(run) == before  # same bytes, not even rewritten
    assert sorted(os.listdir(tmp_path)) == ["run-1"]  # no temporary directories left


def test_a_changed_result_replaces_the_directory_whole(tmp_path):
    run = write_run_dir(forge_result(winner_score=80.0), tmp_path)
    (run / "discord.json").write_text("{}")  # gained after the first write: kept
    write_run_dir(forge_result(winner_score=90.0), tmp_path)
    assert json.loads((run / "summary.json").read_text())["winner_score"] == 90.0
    assert (run / "discord.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["run-1"]


def test_a_crash_while_writing_leaves_no_run_directory(tmp_path, monkeypatch):
    real_open = builtins.open
    calls = {"n": 0}

    def failing_open(path, mode="r", *args, **kwargs):
        if "w" in mode and ".tmp-" in str(path):
            calls["n"] += 1
            if calls["n"] == 4:
                raise OSError("disk full")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(OSError, match="disk full"):
        write_run_dir(forge_result(), tmp_path)
    assert os.listdir(tmp_path) == []  # neither a half run nor a temporary directory
