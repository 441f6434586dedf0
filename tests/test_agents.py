"""The five demo agents: their embedded feeds match the canonical one, and the demo's
expected outcome holds when each runs alone (as in a sandbox) and the judge scores it."""

from __future__ import annotations

import datetime
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from dispatcher.manifest import load_manifest
from worker.judge import JudgeContext, rank, winner
from worker.judge.events import EventsJudge
from worker.judge.parse import parse_events
from worker.records import CandidateResult, Score

# Every test starts processes (the demo agents in local sandboxes); tests/markers.py.
pytestmark = pytest.mark.processes

CANDIDATES = Path(__file__).resolve().parent.parent / "candidates"
FEED = json.loads((CANDIDATES / "data" / "events.json").read_text("utf-8"))
BY_ID = {e["id"]: e for e in FEED["events"]}
IDS = ("alpha", "beta", "gamma", "delta", "epsilon")
OBJECTIVE = "Generate weekly 'AI Events in San Francisco' post for Discord"


BETA = CANDIDATES / "agent_beta"  # the project-form agent (candidates/README.md)
BETA_WHEEL = BETA / "wheels" / "eventpost-1.0-py3-none-any.whl"


def load_agent(cid: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"agent_{cid}", CANDIDATES / f"agent_{cid}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # main() is guarded by __name__: nothing runs
    return module


def canonical(entry: tuple) -> dict:
    """An agent's compact tuple in the canonical JSON shape."""
    ev_id, title, when, at, where, url, kind, source = entry
    out = {"id": ev_id, "title": title}
    out["day_offset" if isinstance(when, int) else "recurring"] = when
    out.update(time=at, location=where, url=url, type=kind, source=source)
    return out


def strip_meta(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "noise"}


# ---------------------------------------------------------------- the canonical feed

def test_feed_is_realistic_and_has_every_kind_of_noise():
    events = FEED["events"]
    assert 25 <= len(events) <= 35
    assert len(BY_ID) == len(events)  # unique ids
    for e in events:
        assert ("day_offset" in e) != ("recurring" in e), e["id"]
        assert e["source"] in FEED["sources"], e["id"]
        assert all(e[k] for k in ("title", "time", "location", "url", "type")), e["id"]
    noise = " | ".join(e.get("noise", "") for e in events)
    for kind in ("duplicate", "malformed url", "unknown host", "past event",
                 "unverified source"):
        assert kind in noise
    assert any(e.get("day_offset", 0) % 7 in (5, 6) for e in events)  # weekend events
    assert any(not s["verified"] for s in FEED["sources"].values())


def test_manifest_lists_the_five_agents():
    m = load_manifest(CANDIDATES / "candidates.toml")
    assert [c.id for c in m.candidates] == list(IDS)
    assert [c.description for c in m.candidates] == [
        "The Speed Demon", "The Perfectionist", "The Insider", "The Crasher",
        "The Hallucinator"]
    assert (m.timeout, m.judge) == (60, "events")
    assert all(c.name == f"Agent {c.id.capitalize()}" for c in m.candidates)


# ---------------------------------------------------------------- embedded copies

def test_alpha_copies_exactly_its_top_sources():
    alpha = load_agent("alpha")
    expected = [strip_meta(e) for e in FEED["events"] if e["source"] in alpha.TOP_SOURCES]
    assert [canonical(t) for t in alpha.FEED] == expected
    ranks = sorted(FEED["sources"], key=lambda s: FEED["sources"][s]["rank"])
    assert tuple(ranks[:2]) == alpha.TOP_SOURCES


def test_beta_project_ships_the_canonical_feed_and_reads_its_trust_lists(monkeypatch):
    """Beta is a project: its data file is the canonical feed, byte for byte, and its
    feed module reads the listings and trust lists from it."""
    assert (BETA / "data" / "events.json").read_bytes() == \
        (CANDIDATES / "data" / "events.json").read_bytes()
    monkeypatch.syspath_prepend(str(BETA))
    from beta import feed

    listings, trusted, known_hosts = feed.load()
    assert feed.FEED_FILE == BETA / "data" / "events.json"
    assert [canonical(t) for t in listings] == [strip_meta(e) for e in FEED["events"]]
    assert set(trusted) == {s for s, info in FEED["sources"].items() if info["verified"]}
    assert set(known_hosts) == set(FEED["known_hosts"])


def test_beta_ships_its_requirement_as_a_wheel_built_from_its_source():
    """The wheel in wheels/ is what vendor/build_wheel.py builds from vendor/ today (so
    the source cannot drift from what installs), the requirements file names it, and the
    project's .forgeignore keeps the source out of the sandbox."""
    import subprocess

    from dispatcher.pack import pack_directory

    spec = importlib.util.spec_from_file_location("build_wheel",
                                                  BETA / "vendor" / "build_wheel.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    name, data = builder.build()
    assert name == BETA_WHEEL.name and BETA_WHEEL.read_bytes() == data
    assert (BETA / "requirements.txt").read_text().split() == [f"./wheels/{name}"]
    shipped = pack_directory(BETA, 10**7).files
    assert f"wheels/{name}" in shipped and "beta/__main__.py" in shipped
    assert not any(f.startswith("vendor/") for f in shipped)
    # Importable from the wheel alone: it is what pip installs in the sandbox.
    out = subprocess.run([sys.executable, "-c", "import eventpost; print(eventpost.__file__)"],
                         env={"PYTHONPATH": str(BETA_WHEEL)}, capture_output=True, text=True)
    assert out.returncode == 0 and BETA_WHEEL.name in out.stdout, out.stderr


@pytest.mark.parametrize("cid, attr", [("gamma", "PICKS"), ("delta", "FEED")])
def test_curated_copies_are_clean_canonical_entries(cid, attr):
    entries = [canonical(t) for t in getattr(load_agent(cid), attr)]
    assert len(entries) >= 3
    for e in entries:
        original = BY_ID[e["id"]]
        assert e == strip_meta(original)
        assert "noise" not in original
        assert FEED["sources"][e["source"]]["verified"]


def test_epsilon_invents_everything():
    invented = load_agent("epsilon").INVENTED
    titles = {e["title"] for e in FEED["events"]}
    urls = {e["url"] for e in FEED["events"]}
    assert invented and all(t[1] not in titles and t[5] not in urls for t in invented)


# ---------------------------------------------------------------- running the demo

def run_agent(cid: str, root: Path) -> CandidateResult:
    """Like the sandbox: the script alone, as script.py, in an empty directory; Beta's
    project copied whole and started with -m, its requirement importable from its wheel."""
    import os

    work = root / cid
    env = dict(os.environ)
    if cid == "beta":
        shutil.copytree(BETA, work)
        argv = ["-m", "beta"]
        env["PYTHONPATH"] = str(work / "wheels" / BETA_WHEEL.name)
    else:
        work.mkdir()
        shutil.copy(CANDIDATES / f"agent_{cid}.py", work / "script.py")
        argv = ["script.py"]
    output = work / "discord_post.md"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, *argv, OBJECTIVE, str(output)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)
    runtime = round(time.monotonic() - t0, 3)
    artifact = output.read_text("utf-8") if output.exists() else None
    return CandidateResult(
        candidate_id=cid, success=proc.returncode == 0 and artifact is not None,
        output=proc.stdout + proc.stderr, artifact_content=artifact,
        runtime_seconds=runtime, exit_code=proc.returncode,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, tuple[CandidateResult, Score]]:
    root = tmp_path_factory.mktemp("demo")
    results = [run_agent(cid, root) for cid in IDS]
    reference = datetime.datetime.now().isoformat()  # the agents' "today" too
    scores = EventsJudge().score(results, JudgeContext(OBJECTIVE, reference, 60))
    rank(scores)
    return {r.candidate_id: (r, s) for r, s in zip(results, scores, strict=True)}


def test_agents_exit_codes_and_progress(demo):
    for cid in IDS:
        r, _ = demo[cid]
        assert r.artifact_content, cid
        assert f"[{cid.capitalize()}] Found" in r.output, cid
        assert r.exit_code == (1 if cid == "delta" else 0), r.output
    assert "ZeroDivisionError" in demo["delta"][0].output


def test_reported_counts_match_what_the_judge_parses(demo):
    for cid in IDS:
        r, s = demo[cid]
        line = next(x for x in r.output.splitlines() if "] Found " in x)
        assert int(line.split("Found ")[1].split()[0]) == s.quality_details["event_count"], cid


def test_expected_demo_ranking(demo):
    scores = [s for _, s in demo.values()]
    ranked = rank(list(scores))
    best = winner(scores)
    assert best is not None and best.candidate_id in ("gamma", "beta")
    assert best.quality_score >= 95

    delta = demo["delta"][1]
    assert not delta.qualified
    assert delta.disqualified_reason == "gate exit_ok: exit code 1"
    assert ranked[-1].candidate_id == "delta"

    epsilon = demo["epsilon"][1]
    assert epsilon.qualified and epsilon.quality_score < 40
    assert epsilon.quality_details["valid_count"] == 0

    alpha = demo["alpha"][1]
    assert alpha.qualified and alpha.rank in (2, 3)
    assert epsilon.total_score < alpha.total_score < best.total_score
    assert alpha.quality_details["valid_count"] >= 3
    assert alpha.quality_details["event_count"] < demo["beta"][1].quality_details["event_count"]


def test_careful_agents_drop_all_noise(demo):
    noisy_urls = {e["url"] for e in FEED["events"] if "noise" in e}
    for cid in ("beta", "gamma"):
        post = demo[cid][0].artifact_content
        urls = {e.url for e in parse_events(post)}
        assert not urls & noisy_urls, cid
        assert demo[cid][1].quality_details["duplicate_count"] == 0
    beta_ids = {e["id"] for e in FEED["events"] if "noise" not in e}
    beta_urls = {e.url for e in parse_events(demo["beta"][0].artifact_content)}
    assert beta_urls == {BY_ID[i]["url"] for i in beta_ids}


def test_alpha_cuts_corners(demo):
    events = parse_events(demo["alpha"][0].artifact_content)
    assert not any(e.date.startswith(("Saturday", "Sunday")) for e in events)
    hosts = {e.url.split("/")[2] if "://" in e.url else "?" for e in events}
    assert hosts <= {"lu.ma", "www.meetup.com", "?"}
    details = demo["alpha"][1].quality_details
    assert details["duplicate_count"] >= 1
    assert details["valid_count"] < details["event_count"]


def test_rescoring_gives_the_same_numbers(demo):
    results = [r for r, _ in demo.values()]
    ctx = JudgeContext(OBJECTIVE, "2030-01-01T00:00:00+00:00", 60)
    first = [s.to_dict() for s in EventsJudge().score(results, ctx)]
    assert first == [s.to_dict() for s in EventsJudge().score(results, ctx)]
    # Judged from 2030, the agents' dates are all stale: the reference, not the clock, rules.
    assert all(s["quality_details"]["valid_count"] <= 1 for s in first)
