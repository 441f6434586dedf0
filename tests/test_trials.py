"""Repeated trials end to end: K x N chord tasks, fresh sandboxes at the same time on
different slots of real workers, the verdict (and "statistically tied") in the console,
summary.json, report and Discord post, resume of missing trials only, and the same
verdict from the embedded and the distributed chord body."""

from __future__ import annotations

import json
import random
from datetime import datetime
from itertools import combinations

import pytest

from dispatcher.competitions import CompetitionsError, load_competitions
from dispatcher.manifest import ManifestError, load_manifest
from tests.discord_server import DiscordServer
from tests.manifests import write_manifest
from tests.procs import ROOT, call_task, forge_env, run_forge_cli
from tests.test_faults import FAST, meta, wait_for, wait_summary

CANDIDATES = ROOT / "candidates"
GAMMA = (CANDIDATES / "agent_gamma.py").read_text()
ALPHA = (CANDIDATES / "agent_alpha.py").read_text()

# Records when it ran, and what it saw of other trials: it leaves a marker file in its
# working directory, sleeps while the other trials run, and lists the markers there.
PROBE = """import os, sys, time, json, uuid
t0 = time.time()
mine = "marker-" + uuid.uuid4().hex
open(mine, "w").close()
time.sleep({seconds})
seen = sorted(f for f in os.listdir(".") if f.startswith("marker-"))
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write("# Probe\\n")
print("PROBE " + json.dumps({{"mine": mine, "seen": seen, "t0": t0, "t1": time.time()}}))
"""


def _probe(output: str) -> dict:
    line = next(x for x in output.splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


# ------------------------------------------------------------------------ input rules


@pytest.mark.processes
@pytest.mark.parametrize("value, problem", [("0", "from 1 to 100"), ("101", "from 1 to 100"),
                                            ("two", "not a whole number"),
                                            ("-3", "from 1 to 100")])
def test_bad_trials_on_the_command_line_is_exit_2_naming_the_fix(value, problem, tmp_path):
    done = run_forge_cli(["run", "--trials", value, "--no-post"], forge_env(None, tmp_path))
    assert done.returncode == 2
    assert "--trials" in done.stderr and problem in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_trials_in_a_manifest_and_in_forge_toml_are_checked(tmp_path):
    ok = write_manifest(tmp_path / "ok", {"a": "print(1)\n"}, header="trials = 4")
    assert load_manifest(ok).trials == 4
    assert load_manifest(write_manifest(tmp_path / "one", {"a": "print(1)\n"})).trials == 1
    for bad in ("0", "true", '"3"', "2.5", "1000"):
        path = write_manifest(tmp_path / f"bad{bad.strip(chr(34))}", {"a": "print(1)\n"},
                              header=f"trials = {bad}")
        with pytest.raises(ManifestError, match=r"field 'trials' = .*1 to 100"):
            load_manifest(path)
    toml = tmp_path / "forge.toml"
    toml.write_text(f'[[competition]]\nname = "w"\nobjective = "x"\ncandidates = "{ok}"\n'
                    'trials = 5\n')
    assert load_competitions(toml)["w"].trials == 5
    toml.write_text(f'[[competition]]\nname = "w"\nobjective = "x"\ncandidates = "{ok}"\n'
                    'trials = 0\n')
    with pytest.raises(CompetitionsError, match=r"competition 'w'.*'trials' = 0"):
        load_competitions(toml)


def test_plan_has_k_tasks_per_candidate_with_deterministic_ids(tmp_path):
    from dispatcher.runner import prepare

    manifest = write_manifest(tmp_path / "c", {"a": "print(1)\n", "b": "print(2)\n"})
    plan = prepare(candidates=str(manifest), artifacts_dir=str(tmp_path), run_id="r",
                   trials=3, post=False)
    assert [t.task_id for t in plan.tasks] == ["r:a:1", "r:b:1", "r:a:2", "r:b:2", "r:a:3",
                                               "r:b:3"]
    assert plan.run.trials == 3 and {t.trials for t in plan.tasks} == {3}
    one = prepare(candidates=str(manifest), artifacts_dir=str(tmp_path), run_id="r",
                  post=False)
    assert [t.task_id for t in one.tasks] == ["r:a", "r:b"]  # K = 1: today's ids
    # K is part of what a run is: resume refuses a run re-planned with another K.
    assert plan.run.definition_sha256 != one.run.definition_sha256
    again = prepare(candidates=str(manifest), artifacts_dir=str(tmp_path), run_id="x",
                    post=False)
    assert again.run.definition_sha256 == one.run.definition_sha256


# ------------------------------------------------------------------------ real workers


@pytest.mark.processes
def test_trials_of_one_candidate_run_in_different_sandboxes_at_once_on_different_slots(
        distributed_env, workers, artifacts, tmp_path):
    """Four trials of one candidate on 2 workers x 2 slots: four sandboxes, all alive at
    the same moment, so on four different slots (a slot runs one task at a time)."""
    workers(distributed_env, n=2, concurrency=2)
    manifest = write_manifest(tmp_path / "c", {"solo": PROBE.format(seconds=3)})
    done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "par",
                          "--trials", "4", "--json", "--no-post"], distributed_env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    trials = result["trial_results"]
    assert sorted(r["trial"] for r in trials) == [0, 1, 2, 3]
    assert all(r["success"] for r in trials), trials
    probes = [_probe(r["output"]) for r in trials]
    assert len({r["sandbox_id"] for r in trials}) == 4  # four fresh sandboxes
    # No trial saw another's marker: each ran in its own fresh filesystem.
    assert all(p["seen"] == [p["mine"]] for p in probes), probes
    # Every pair overlapped in time: all four ran at once.
    for a, b in combinations(probes, 2):
        assert a["t0"] < b["t1"] and b["t0"] < a["t1"], (a, b)
    assert {r["worker"].split("@")[0] for r in trials} == {"w1", "w2"}
    # The chord's header tasks: <run>:<candidate>:<k>, each with its own stored result.
    client = __import__("redis").Redis.from_url(distributed_env["CELERY_BROKER_URL"])
    for k in range(1, 5):
        assert meta(client, f"par:solo:{k}")["result"]["trial"] == k - 1
    for k in range(1, 5):
        rec = json.loads((artifacts / "par" / "solo" / f"trial-{k}" / "result.json")
                         .read_text())
        assert rec["trial"] == k - 1 and rec["success"]


@pytest.mark.processes
def test_resume_reruns_only_the_missing_trials(redis_server, workers, artifacts, tmp_path):
    """Two of six trials lost from the queue: resume publishes exactly those two, keeps
    the four finished ones untouched, and the run has every trial exactly once."""
    env = forge_env(redis_server.url, artifacts, **FAST)
    manifest = write_manifest(tmp_path / "c", {"alpha": ALPHA, "gamma": GAMMA},
                              header='judge = "events"')
    done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "rt",
                          "--trials", "3", "--detach"], env)
    assert done.returncode == 0, done.stderr
    client = redis_server.client()
    lost = {"rt:alpha:2", "rt:gamma:3"}
    removed = 0
    for raw in client.lrange("celery", 0, -1):
        if json.loads(raw)["headers"]["id"] in lost:
            removed += client.lrem("celery", 1, raw)
    assert removed == 2
    workers(env, n=1, concurrency=2)
    kept_ids = [f"rt:{c}:{k}" for c in ("alpha", "gamma") for k in (1, 2, 3)
                if f"rt:{c}:{k}" not in lost]
    wait_for(lambda: all((meta(client, t) or {}).get("status") == "SUCCESS" for t in kept_ids),
             90, "the four published trials")
    started = {t: meta(client, t)["result"]["started_at"] for t in kept_ids}
    assert not (artifacts / "rt").exists()  # the chord cannot complete by itself

    resumed = run_forge_cli(["resume", "rt", "--json"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert "re-running 2 of 6 trials (3 per candidate), keeping 4 results" in resumed.stderr
    result = json.loads(resumed.stdout)
    summary = wait_summary(artifacts, "rt")
    for doc in (result, summary):
        pairs = sorted((r["candidate_id"], r["trial"]) for r in doc["trial_results"])
        assert pairs == [(c, k) for c in ("alpha", "gamma") for k in range(3)]
        assert all(r["success"] and r["attempt"] == 1 for r in doc["trial_results"])
        assert sorted(s["candidate_id"] for s in doc["trial_summaries"]) == ["alpha", "gamma"]
    for r in summary["trial_results"]:
        tid = f"rt:{r['candidate_id']}:{r['trial'] + 1}"
        if tid in started:  # kept, not run again
            assert r["started_at"] == started[tid]
    assert summary["winner_id"] == "gamma" and summary["verdict"]["status"] == "clear"


# ------------------------------------------------------------------------ the verdict


@pytest.mark.processes
def test_two_equal_candidates_are_reported_tied_not_crowned_apart(artifacts, tmp_path):
    """Twins (the same agent) and a weaker third: the console, summary.json, the report
    and the Discord post all say statistically tied; the third is not among them."""
    manifest = write_manifest(tmp_path / "c", {"twin_a": GAMMA, "twin_b": GAMMA,
                                               "alpha": ALPHA}, header='judge = "events"')
    with DiscordServer() as hook:
        env = forge_env(None, artifacts, DISCORD_WEBHOOK_URL=hook.url)
        done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "tie",
                              "--trials", "3", "--json"], env)
        assert done.returncode == 0, done.stderr
        posted = [r.content for r in hook.requests]
    result = json.loads(done.stdout)
    verdict = result["verdict"]
    assert verdict["status"] == "tied" and verdict["tied"] is True
    assert sorted(verdict["contenders"]) == ["twin_a", "twin_b"]
    assert result["winner_id"] in ("twin_a", "twin_b")
    assert "post goes to " + result["winner_id"] in verdict["reason"]
    console = done.stderr
    assert "STATISTICALLY TIED" in console and "WINNER:" not in console
    report = (artifacts / "tie" / "report.md").read_text()
    assert "Statistically tied" in report
    html = (artifacts / "tie" / "report.html").read_text()
    assert "Statistically tied" in html
    assert posted, "nothing was posted"
    assert "Statistically tied" in posted[0] and " wins " not in posted[0]
    assert "Candidate twin_a" in posted[0] and "Candidate twin_b" in posted[0]
    assert "Candidate alpha" not in posted[0].split("\n")[0]


@pytest.mark.processes
def test_a_clear_leader_is_crowned_with_its_interval(artifacts, tmp_path):
    """Positive control of the tie test: gamma against alpha is not a tie."""
    manifest = write_manifest(tmp_path / "c", {"gamma": GAMMA, "alpha": ALPHA},
                              header='judge = "events"')
    with DiscordServer() as hook:
        env = forge_env(None, artifacts, DISCORD_WEBHOOK_URL=hook.url)
        done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "clear",
                              "--trials", "3", "--json"], env)
        assert done.returncode == 0, done.stderr
        posted = [r.content for r in hook.requests]
    result = json.loads(done.stdout)
    assert result["verdict"]["status"] == "clear" and result["winner_id"] == "gamma"
    assert "WINNER: Candidate gamma (gamma) with mean" in done.stderr
    assert "95% CI" in done.stderr and "STATISTICALLY TIED" not in done.stderr
    assert posted[0].startswith("🏆 **Candidate gamma** wins with a mean")
    assert "over 3 trials (95% CI" in posted[0]
    assert "Statistically tied" not in (artifacts / "clear" / "report.md").read_text()


@pytest.mark.processes
def test_embedded_and_distributed_chord_bodies_give_the_same_verdict(
        redis_server, workers, artifacts, tmp_path):
    """The trial results of a real embedded run, shuffled, judged again by a distributed
    worker's chord body: the same ranking, intervals, verdict and winner."""
    manifest = write_manifest(tmp_path / "c", {"twin_a": GAMMA, "twin_b": GAMMA,
                                               "alpha": ALPHA}, header='judge = "events"')
    done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "same",
                          "--trials", "3", "--json", "--no-post"],
                         forge_env(None, artifacts))
    assert done.returncode == 0, done.stderr
    embedded = json.loads(done.stdout)
    env = forge_env(redis_server.url, tmp_path / "other")
    workers(env, n=1, concurrency=2)
    results = [dict(r, output="", log=[]) for r in embedded["trial_results"]]
    rng = random.Random(7)
    rng.shuffle(results)
    spec = {"run_id": "same", "objective": embedded["objective"],
            "timestamp": embedded["timestamp"], "execution_mode": "local",
            "artifacts_dir": str(tmp_path / "other"), "candidates": embedded["candidates"],
            "judge": "events", "timeout": 60, "trials": 3,
            "definition_sha256": embedded["definition_sha256"]}
    distributed = call_task(redis_server, "worker.tasks.collect_results", results, spec,
                            timeout=60)
    for key in ("verdict", "trial_summaries", "winner_id", "winner_score", "trials"):
        assert distributed[key] == embedded[key], key
    assert [(s["candidate_id"], s["rank"], s["total_score"]) for s in distributed["scores"]] \
        == [(s["candidate_id"], s["rank"], s["total_score"]) for s in embedded["scores"]]


@pytest.mark.processes
def test_k1_runs_exactly_as_before(artifacts, tmp_path):
    """One trial: today's task ids, files and leaderboard; no trial directories."""
    manifest = write_manifest(tmp_path / "c", {"gamma": GAMMA, "alpha": ALPHA},
                              header='judge = "events"')
    done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "k1", "--json",
                          "--no-post"], forge_env(None, artifacts))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["trials"] == 1 and result["verdict"] is None
    assert result["trial_results"] == [] and result["trial_summaries"] == []
    assert "WINNER: gamma with 100.0/100" in done.stderr
    assert "95% CI" not in done.stderr
    assert not list((artifacts / "k1").rglob("trial-*"))
    assert not list((artifacts / "k1").rglob("trials.json"))


def test_the_verdict_does_not_depend_on_the_order_results_arrive_in():
    from worker.judge.aggregate import build_trials_result
    from worker.records import CandidateInfo, CandidateResult, RunSpec

    rng = random.Random(3)
    cands = ["a", "b", "c"]
    results = []
    for cid in cands:
        for k in range(5):
            ok = not (cid == "c" and k == 2)
            results.append(CandidateResult(
                candidate_id=cid, trial=k, success=ok, runtime_seconds=rng.uniform(0.5, 3),
                artifact_content="**Event**\n" if ok else None).to_dict())
    spec = RunSpec(run_id="o", objective="x", timestamp=datetime(2026, 1, 1).isoformat(),
                   execution_mode="local", artifacts_dir="/tmp/o",
                   candidates=[CandidateInfo(id=c, name=c) for c in cands], trials=5)
    first = build_trials_result(results, spec).to_dict()
    for _ in range(5):
        rng.shuffle(results)
        dup = results + [results[0]]  # a redelivered duplicate changes nothing
        assert build_trials_result(dup, spec).to_dict() == first
    assert sorted((r["candidate_id"], r["trial"]) for r in first["trial_results"]) == \
        [(c, k) for c in cands for k in range(5)]


def test_the_live_dashboard_follows_a_trials_run_by_its_first_trial(redis_server, tmp_path):
    """While a run of repeated trials runs, the live page reads each candidate's first
    trial (task <run>:<candidate>:1): its PROGRESS lines show."""
    from celery import Celery

    from dispatcher.web.data import Data
    from dispatcher.web.live import LiveHub
    from dispatcher.web.settings import WebSettings
    from worker.records import CandidateInfo, RunSpec
    from worker.store import open_store
    from worker.store.db import dispose_all

    url = f"sqlite:///{tmp_path / 'a' / 'forge.db'}"
    store = open_store(url)
    spec = RunSpec(run_id="tr", objective="o", timestamp="2026-12-01T10:00:00+00:00",
                   execution_mode="local", artifacts_dir=str(tmp_path / "a"),
                   candidates=[CandidateInfo(id="c0", name="C0")], trials=3)
    store.write_queued(spec)
    store.mark_running("tr", "c0", worker="w1@host", trial=0)
    app = Celery("t", broker=redis_server.url, backend=redis_server.url,
                 set_as_current=False)
    app.backend.store_result("tr:c0:1", {"candidate_id": "c0", "seq": 1,
                                         "log": ["[Run] trial one says hi"], "worker": "w1@host",
                                         "attempt": 1}, "PROGRESS")
    hub = LiveHub(Data(WebSettings(artifacts_dir=str(tmp_path / "a"), database_url=url)),
                  None, 0.1, backend=app.backend)
    snap = hub.snapshot("tr")
    (c0,) = snap.candidates
    assert c0.state == "running" and "[Run] trial one says hi" in c0.log
    app.backend.store_result("tr:c0:1", {"candidate_id": "c0", "seq": 2,
                                         "log": ["[Run] trial one says hi", "[Run] more"],
                                         "worker": "w1@host", "attempt": 1}, "PROGRESS")
    assert "[Run] more" in hub.snapshot("tr").candidates[0].log
    app.close()
    dispose_all()
