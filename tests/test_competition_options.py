"""Per-competition sandbox options (egress_allow, egress_deny, cpus, speed, exclusive):
validated with clear errors in candidates.toml and forge.toml, carried typed from the
manifest to the task, the sandbox request and the judge, and reported."""

from __future__ import annotations

import hashlib
import html
import json
import os
from pathlib import Path

import pytest

from dispatcher import run_forge
from dispatcher.competitions import CompetitionsError, load_competitions
from dispatcher.manifest import ManifestError, load_manifest
from dispatcher.plan import plan_run
from dispatcher.request import RunRequest
from tests.manifests import write_manifest
from worker import report
from worker.judge import JudgeContext
from worker.judge.events import EventsJudge
from worker.judge.scoring import build_forge_result
from worker.records import CandidateResult, CandidateTask, Egress, ForgeResult, RunSpec
from worker.sandbox import get_backend

OK = "import sys\nopen(sys.argv[2], 'w').write('# hi\\n')\n"


def manifest(tmp_path: Path, header: str) -> Path:
    return write_manifest(tmp_path / "cands", {"a": OK, "b": OK}, header=header)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("header,words", [
    ('egress_allow = "10.0.0.1"', ["'egress_allow' must be a list"]),
    ('egress_allow = ["10.0.0.1/8"]', ["'egress_allow'", "host bits set; write 10.0.0.0/8"]),
    ('egress_allow = ["127.0.0.1"]', ["'egress_allow'", "loopback"]),
    ('egress_allow = ["fd00::1"]', ["'egress_allow'", "IPv6"]),
    ('egress_deny = ["10.0.2.3"]', ["'egress_deny'", "slirp4netns network"]),
    ('egress_deny = ["not a host!"]', ["'egress_deny'", "neither an IPv4 address"]),
    ('cpus = 0', ["'cpus' = 0", "more than 0"]),
    ('cpus = "1"', ["'cpus' must be a number of cores"]),
    ('cpus = true', ["'cpus' must be a number"]),
    ('speed = "fast"', ["'speed' = 'fast'", "'wall', 'cpu'"]),
    ('exclusive = "yes"', ["'exclusive' must be a bool"]),
])
def test_bad_options_are_refused_in_the_manifest(tmp_path, header, words):
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest(tmp_path, header))
    for w in words:
        assert w in str(err.value), str(err.value)
    assert "candidates.toml" in str(err.value)


def competitions(tmp_path: Path, extra: str) -> Path:
    manifest(tmp_path, "")
    path = tmp_path / "forge.toml"
    path.write_text('[[competition]]\nname = "c"\nobjective = "o"\n'
                    f'candidates = "cands/candidates.toml"\n{extra}\n')
    return path


@pytest.mark.parametrize("extra,words", [
    ('egress_allow = ["10.0.0.1/8"]', ["competition 'c'", "'egress_allow'", "host bits"]),
    ('egress_deny = 5', ["competition 'c'", "'egress_deny' must be a list"]),
    ('cpus = -1', ["competition 'c'", "'cpus' = -1"]),
    ('speed = "cpu"\nexecution = "daytona"', ["'speed' = 'cpu' needs execution = 'local'"]),
    ('exclusive = 1', ["competition 'c'", "'exclusive' must be a bool"]),
])
def test_bad_options_are_refused_in_forge_toml(tmp_path, extra, words):
    with pytest.raises(CompetitionsError) as err:
        load_competitions(competitions(tmp_path, extra))
    for w in words:
        assert w in str(err.value), str(err.value)


def test_competition_overrides_the_manifest_and_tasks_carry_the_options(tmp_path):
    path = competitions(tmp_path, 'egress_allow = ["models.internal"]\ncpus = 0.5\n'
                                  'speed = "cpu"\nexclusive = true')
    comp = load_competitions(path)["c"]
    assert comp.egress_allow == ("models.internal",) and comp.egress_deny is None
    m = load_manifest(manifest(tmp_path, 'egress_allow = ["10.1.2.3"]\n'
                                         'egress_deny = ["203.0.113.0/24"]\ncpus = 2'))
    assert m.egress == Egress(("10.1.2.3",), ("203.0.113.0/24",)) and m.cpus == 2
    asked = RunRequest(objective="o", artifacts_dir=str(tmp_path),
                       egress_allow=comp.egress_allow, cpus=comp.cpus, speed=comp.speed,
                       exclusive=comp.exclusive)
    plan = plan_run(asked, m)
    t = plan.tasks[0]
    assert t.egress == Egress(("models.internal",), ("203.0.113.0/24",))
    assert t.limits.cpus == 0.5 and t.exclusive is True and plan.run.speed == "cpu"
    # Typed across the JSON boundary, unchanged.
    again = CandidateTask.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t and isinstance(again.egress, Egress)
    # Resume re-plans from the stored request, read back through JSON, and gets the
    # same run: same id, same definition.
    stored = RunRequest.from_dict(json.loads(json.dumps(plan.request.to_dict())))
    assert stored == plan.request and stored.egress_allow == ("models.internal",)
    assert stored.run_id == plan.run.run_id and stored.candidates == os.path.abspath(m.path)
    replanned = plan_run(stored, m)
    assert replanned.run.definition_sha256 == plan.run.definition_sha256
    assert replanned.run.run_id == plan.run.run_id
    plain = plan_run(RunRequest(objective="o", artifacts_dir=str(tmp_path)), m)
    assert plain.run.definition_sha256 != plan.run.definition_sha256
    with pytest.raises(ManifestError, match="speed = 'cpu' needs local execution"):
        plan_run(RunRequest(objective="o", artifacts_dir=str(tmp_path), speed="cpu"), m,
                 execution_mode="daytona")


def test_default_options_keep_older_fingerprints(tmp_path):
    """A run planned before these options existed still resumes: at their defaults the
    new fields stay out of the definition fingerprint."""
    m = load_manifest(manifest(tmp_path, ""))
    plan = plan_run(RunRequest(objective="o", artifacts_dir=str(tmp_path), run_id="r"), m)
    old_fields = ("candidate_id", "name", "script_name", "script_sha256", "objective",
                  "execution_mode", "timeout", "network", "env_allow", "requirements",
                  "install_timeout", "upload_timeout", "retrieve_timeout")
    old_limits = ("memory_mb", "max_processes", "max_file_mb", "cpu_seconds", "open_files",
                  "output_bytes", "artifact_bytes")
    docs = []
    for t in plan.tasks:
        d = {k: v for k, v in t.to_dict().items() if k in old_fields}
        d["limits"] = {k: v for k, v in t.limits.to_dict().items() if k in old_limits}
        docs.append(d)
    old = {"objective": "o", "judge": "events", "candidates": docs}
    expected = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert plan.run.definition_sha256 == expected


# --------------------------------------------------------------------------- judging


POST = "# AI Events\n\n" + "\n".join(
    f"**Event {i}**\n📅 Date: 2026-01-2{i}\n📍 Location: San Francisco\n"
    f"🔗 URL: https://lu.ma/e{i}\n" for i in range(3, 6))


def result(cid: str, wall: float, cpu: float | None) -> CandidateResult:
    return CandidateResult(candidate_id=cid, success=True, exit_code=0, artifact_content=POST,
                           runtime_seconds=wall, cpu_seconds=cpu)


def test_speed_on_cpu_time_ignores_a_slow_neighbour():
    """Slowed down by a hog next to it (long wall time, little CPU), "patient" loses on
    wall time and wins on CPU time against "burner", which used every core."""
    pair = [result("patient", wall=30, cpu=2), result("burner", wall=10, cpu=40)]
    ref = "2026-01-20T10:00:00+00:00"
    wall = {s.candidate_id: s.speed_score for s in
            EventsJudge().score(pair, JudgeContext("AI events", ref, 60))}
    cpu = {s.candidate_id: s.speed_score for s in
           EventsJudge().score(pair, JudgeContext("AI events", ref, 60, "cpu"))}
    assert wall["patient"] < wall["burner"]
    assert cpu["patient"] > cpu["burner"]


def run_spec(speed: str) -> RunSpec:
    from worker.records import CandidateInfo

    return RunSpec(run_id="r", objective="AI events", timestamp="2026-01-20T10:00:00+00:00",
                   execution_mode="local", artifacts_dir="/nowhere", speed=speed,
                   candidates=[CandidateInfo("patient", "P"), CandidateInfo("burner", "B")])


def test_the_report_says_which_time_the_speed_score_used():
    pair = [result("patient", 30, 2).to_dict(), result("burner", 10, None).to_dict()]
    on_cpu = build_forge_result(pair, run_spec("cpu"))
    on_wall = build_forge_result(pair, run_spec("wall"))
    assert on_cpu.speed == "cpu" and on_cpu.winner_id == "patient"
    assert on_wall.winner_id == "burner"
    # A result without a CPU figure is scored on wall time, and the run says so.
    assert any("burner had no CPU figure" in n for n in on_cpu.notes), on_cpu.notes
    assert not on_wall.notes
    for res, words in ((on_cpu, "CPU time of each candidate's processes"),
                       (on_wall, "wall time of each candidate's run")):
        again = ForgeResult.from_dict(json.loads(json.dumps(res.to_dict())))
        md, page = report.render_markdown(again), report.render_html(again)
        assert f"**Speed scored on:** {words}" in md
        assert words in html.unescape(page)
        assert "| Runtime | CPU |" in md and "| 30.00s | 2.00s |" in md


# --------------------------------------------------------------------------- end to end


SPIN = """import sys, time
end = time.monotonic() + 0.3
while time.monotonic() < end:
    pass
open(sys.argv[2], "w").write("# spun: " + sys.argv[1])
"""


@pytest.mark.processes
def test_options_travel_from_the_manifest_to_the_sandbox_and_the_report(tmp_path, monkeypatch):
    """Embedded run (real Celery worker in-process, real sandboxes)."""
    # The core slots of this test's own, not the machine's (other runs share those).
    monkeypatch.setattr(get_backend("local"), "slots_dir", str(tmp_path / "cores"))
    header = ('egress_allow = ["10.1.2.3"]\negress_deny = ["203.0.113.0/24"]\ncpus = 1\n'
              'speed = "cpu"\nexclusive = true')
    path = write_manifest(tmp_path / "cands", {"spin": SPIN, "idle": OK}, header=header)
    result = run_forge("Spin", candidates=str(path), artifacts_dir=str(tmp_path / "a"),
                       run_id="opts-1", post=False)
    by_id = {r.candidate_id: r for r in result.results}
    for r in by_id.values():
        assert r.success, (r.error_message, r.output)
        assert "public internet only; allow 1, deny 1" in r.isolation, r.isolation
        assert "cpu equal weight, cpu cap 1" in r.isolation, r.isolation
        assert r.cpu_seconds is not None and "reserve" in r.timings
    assert by_id["spin"].cpu_seconds > by_id["idle"].cpu_seconds
    run_dir = tmp_path / "a" / "opts-1"
    assert json.loads((run_dir / "summary.json").read_text())["speed"] == "cpu"
    assert "Speed scored on:** CPU time" in (run_dir / "report.md").read_text()
