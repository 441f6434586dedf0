"""worker/keys.py: every Redis key and task id, one convention, made in one place."""

from __future__ import annotations

import ast
import inspect
import re
from datetime import UTC, datetime
from pathlib import Path

from dispatcher import runs
from dispatcher.plan import RunPlan
from dispatcher.request import RunRequest
from tests.procs import ROOT
from worker import keys
from worker.records import CandidateInfo, RunSpec

# A string that starts a Redis key of ours, in either of the old conventions or the one.
KEY_LITERAL = re.compile(r"^forge[-:][a-z][a-z-]*:")


def test_every_key_is_forge_kind_id():
    made = []
    for name, fn in inspect.getmembers(keys, inspect.isfunction):
        if fn.__module__ != keys.__name__ or not name.endswith(("_key", "_channel", "_prefix")):
            continue
        args = ["x"] * len([p for p in inspect.signature(fn).parameters.values()
                            if p.default is inspect.Parameter.empty])
        if name == "competition_slot_key":
            args = ["weekly", datetime(2026, 1, 5, 9, 0, tzinfo=UTC)]
        made.append(fn(*args))
    made.append(keys.METRICS_LAST_SUCCESS_KEY)
    assert len(made) >= 15
    for key in made:
        assert re.fullmatch(r"forge:[a-z][a-z-]*:[^\s]*", key), key


def test_task_ids_and_the_slot_key_keep_their_shapes():
    assert keys.candidate_task_id("r1", "alpha") == "r1:alpha"
    assert keys.body_task_id("r1") == "r1:collect"
    slot = datetime(2026, 1, 5, 9, 0)  # naive: UTC
    assert keys.competition_slot_key("weekly", slot) == \
        "forge:competition:weekly:slot:20260105T090000Z"
    la = datetime.fromisoformat("2026-01-05T01:00:00-08:00")
    assert keys.competition_slot_key("weekly", la) == keys.competition_slot_key("weekly", slot)


def key_literals(source: str) -> list[str]:
    """String constants (f-string parts included) that start one of our Redis keys."""
    return [node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and KEY_LITERAL.match(node.value)]


def test_no_module_but_keys_spells_a_key():
    found = {}
    for package in ("worker", "dispatcher"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == Path(keys.__file__):
                continue
            literals = key_literals(path.read_text("utf-8"))
            if literals:
                found[str(path.relative_to(ROOT))] = literals
    assert found == {}, "Redis keys are made in worker/keys.py only"
    # Positive control: both old spellings are caught, messages are not.
    assert sorted(key_literals('k = f"forge-attempts:{tid}"\nj = "forge:budget:x"\n'
                               'm = "forge: error: x"\nd = "forge-etc-"\n')) == \
        ["forge-attempts:", "forge:budget:x"]


def test_a_run_record_from_before_the_convention_is_still_read(redis_server, tmp_path,
                                                                monkeypatch):
    """A run published by an older dispatcher (``forge-run:<id>``) keeps its status and
    resume; a new one is stored under ``forge:run:<id>``."""
    client = redis_server.client()
    monkeypatch.setattr(runs, "_client", lambda app: client)  # the real Redis, no app
    spec = RunSpec(run_id="old", objective="o", timestamp="t", execution_mode="local",
                   artifacts_dir=str(tmp_path), candidates=[CandidateInfo(id="a", name="a")])
    plan = RunPlan(run=spec, tasks=(), request=RunRequest(objective="o", run_id="old"))
    assert runs.load(None, "old") is None
    client.set(keys.LEGACY_RUN_RECORD_PREFIX + "old", runs.record_for(plan).to_json())
    assert runs.load(None, "old").run_request.run_id == "old"
    runs.save(None, runs.record_for(plan))
    assert client.exists(keys.run_record_key("old")) and keys.run_record_key("old") == \
        "forge:run:old"
