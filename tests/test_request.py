"""RunRequest: every entry point's one typed request, stored as it is and planned again."""

from __future__ import annotations

import json

import pytest

from dispatcher.competitions import load_competitions
from dispatcher.manifest import load_manifest
from dispatcher.plan import plan_run
from dispatcher.request import RunRequest
from dispatcher.runner import plan_request, prepare
from dispatcher.runs import RunRecord, record_for
from tests.manifests import write_manifest
from worker.records import Limits
from worker.validation import InvalidInput

ECHO = "import sys\nopen(sys.argv[2], 'w').write('# x\\n' + sys.argv[1])\n"


@pytest.fixture
def manifest(tmp_path):
    return write_manifest(tmp_path / "c", {"a": ECHO, "b": ECHO})


def test_a_request_survives_json_unchanged():
    asked = RunRequest(objective="o", daytona=True, candidates="/m/candidates.toml",
                       run_id="r1", timeout=30, network=False, env_allow=("A", "B"),
                       judge="events", post=False, competition="weekly",
                       limits=Limits(memory_mb=256, cpus=0.5), egress_allow=("10.0.0.1",),
                       egress_deny=(), cpus=0.5, speed="cpu", exclusive=True, max_sandboxes=3)
    back = RunRequest.from_dict(json.loads(json.dumps(asked.to_dict())))
    assert back == asked
    assert isinstance(back.limits, Limits) and isinstance(back.env_allow, tuple)


@pytest.mark.parametrize("bad, words", [
    (RunRequest(objective=""), "objective"),
    (RunRequest(run_id="../x"), "run id"),
    (RunRequest(timeout=0), "from 1 to 86400"),
    (RunRequest(timeout=True), "whole"),
])
def test_validate_refuses_what_no_run_may_have(bad, words):
    with pytest.raises(InvalidInput, match=words):
        bad.validate()


def test_the_plan_keeps_the_request_resolved(manifest, tmp_path, monkeypatch):
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    plan = plan_request(RunRequest(objective="o", candidates=str(manifest.parent),
                                   artifacts_dir=str(tmp_path / "a"), timeout=7))
    r = plan.request
    assert r.run_id == plan.run.run_id and r.post is False and r.timeout == 7
    assert r.candidates == str(manifest) and r.artifacts_dir == str(tmp_path / "a")
    # The keyword form builds the same request.
    again = prepare("o", candidates=str(manifest.parent), artifacts_dir=str(tmp_path / "a"),
                    timeout=7, run_id=r.run_id)
    assert again.request == r and again.run.definition_sha256 == plan.run.definition_sha256
    with pytest.raises(TypeError):
        prepare("o", no_such_option=1)


def test_the_run_record_stores_the_request_and_resume_plans_it_again(manifest, tmp_path):
    plan = plan_request(RunRequest(objective="o", candidates=str(manifest),
                                   artifacts_dir=str(tmp_path), network=False,
                                   env_allow=("X",), cpus=0.25))
    record = RunRecord.from_json(record_for(plan).to_json())
    assert record.run_request == plan.request
    replanned = plan_run(record.run_request, load_manifest(record.run_request.candidates))
    assert replanned.run.definition_sha256 == plan.run.definition_sha256
    assert replanned.run.run_id == plan.run.run_id
    assert replanned.tasks == plan.tasks  # local: no budget clock, so every field alike


def test_a_record_from_before_requests_resumes_the_same_run(manifest, tmp_path):
    """Records written by an older dispatcher hold ``source`` (the overrides) instead of
    the request: read back, they give the request the run was planned from."""
    plan = plan_request(RunRequest(objective="o", candidates=str(manifest),
                                   artifacts_dir=str(tmp_path), network=False,
                                   egress_allow=("10.1.1.1",), cpus=0.5, post=False))
    old = {"run": plan.run.to_dict(), "tasks": [],
           "source": {"manifest": str(manifest), "timeout": None, "network": False,
                      "env_allow": None, "judge": None, "limits": None,
                      "egress_allow": ["10.1.1.1"], "egress_deny": None, "cpus": 0.5,
                      "speed": None, "exclusive": None, "max_sandboxes": None},
           "status": "published", "created_at": 1.0}
    record = RunRecord.from_json(json.dumps(old))
    assert record.run_request == plan.request


def test_a_competition_asks_for_what_forge_toml_says(manifest, tmp_path):
    toml = tmp_path / "forge.toml"
    toml.write_text(f'[[competition]]\nname = "w"\nobjective = "weekly"\n'
                    f'candidates = "{manifest}"\nexecution = "daytona"\ntimeout = 9\n'
                    f'post = true\nevery = 60\nmax_sandboxes = 2\n')
    asked = load_competitions(toml)["w"].request("w-20260101-000000")
    assert asked == RunRequest(objective="weekly", daytona=True, candidates=str(manifest),
                               run_id="w-20260101-000000", timeout=9, post=True,
                               competition="w", max_sandboxes=2)
