"""Records survive a JSON round trip unchanged (task messages, results, summary.json)."""

from __future__ import annotations

import json

from worker.records import (
    CandidateInfo,
    CandidateResult,
    CandidateTask,
    ForgeResult,
    Limits,
    RunSpec,
    Score,
    sha256_text,
    task_id_for,
)


def test_candidate_task_round_trip_and_deterministic_id():
    task = CandidateTask(run_id="r1", candidate_id="alpha", name="A", script_name="a.py",
                         script="print(1)\n", script_sha256=sha256_text("print(1)\n"),
                         objective="obj", env_allow=("X",), requirements=("requests",),
                         limits=Limits(memory_mb=256))
    wire = json.loads(json.dumps(task.to_dict()))
    back = CandidateTask.from_dict(wire)
    assert back == task
    assert back.task_id == task_id_for("r1", "alpha") == "r1:alpha"
    assert "script" in wire and wire["env_allow"] == ["X"]


def test_result_and_forge_result_round_trip():
    r = CandidateResult(candidate_id="a", success=True, output="x", artifact_content="post",
                        runtime_seconds=1.5, exit_code=0, worker="w1@h", log=["[Run] Starting..."])
    s = Score(candidate_id="a", total_score=90.0, qualified=True, gates={"exit_ok": True})
    f = ForgeResult(run_id="r", objective="o", timestamp="t", execution_mode="local",
                    candidates=[CandidateInfo(id="a", name="A")], scores=[s], winner_id="a",
                    winner_score=90.0, results=[r])
    back = ForgeResult.from_dict(json.loads(json.dumps(f.to_dict())))
    assert back == f
    assert back.result_for("a") == r and back.score_for("a") == s
    assert back.result_for("zzz") is None


def test_unknown_keys_are_ignored_for_forward_compatibility():
    r = CandidateResult.from_dict({"candidate_id": "a", "from_the_future": 1})
    assert r.candidate_id == "a"
    spec = RunSpec.from_dict({"run_id": "r", "objective": "o", "timestamp": "t",
                              "execution_mode": "local", "artifacts_dir": "/x",
                              "candidates": [{"id": "a", "name": "A", "extra": 1}]})
    assert spec.candidates[0] == CandidateInfo(id="a", name="A")


def test_to_dict_equals_dataclasses_asdict_and_copies_containers():
    """The fast to_dict gives what dataclasses.asdict gives, with fresh containers."""
    import dataclasses

    r = CandidateResult(candidate_id="a", success=True, output="x", log=["l1", "l2"],
                        timings={"exec": 0.5}, warnings=["w"])
    f = ForgeResult(run_id="r", objective="o", timestamp="t", execution_mode="local",
                    candidates=[CandidateInfo(id="a", name="A")],
                    scores=[Score(candidate_id="a", total_score=1.0, gates={"g": True})],
                    results=[r], notes=["n"])
    task = CandidateTask(run_id="r1", candidate_id="alpha", name="A", script_name="a.py",
                         script="x", script_sha256=sha256_text("x"), objective="obj",
                         limits=Limits(memory_mb=256))
    for record in (r, f, task.limits):
        assert record.to_dict() == dataclasses.asdict(record)
    d = f.to_dict()
    d["results"][0]["log"].append("changed")
    d["scores"][0]["gates"]["g"] = False
    assert r.log == ["l1", "l2"] and f.scores[0].gates == {"g": True}
