"""The events judge: validator checks, markdown parsing, gates, rubric, ranking."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import pytest

from worker.judge import JudgeContext, get_judge, rank, winner
from worker.judge.events import (
    GATES,
    EventsJudge,
    check_gates,
    quality_score,
    score_result,
    speed_score,
    validate_events,
)
from worker.judge.parse import parse_events
from worker.judge.validate import (
    WEIGHTS,
    check_ai,
    check_date,
    check_link,
    check_location,
    parse_date,
    reference_date,
    validate_event,
)
from worker.records import CandidateResult, Score

REF = "2026-01-20T10:00:00+00:00"
REF_DATE = date(2026, 1, 20)
CTX = JudgeContext("AI events in SF", REF, 60)


def day(offset: int) -> str:
    d = REF_DATE + timedelta(days=offset)
    return f"{d:%A}, {d:%B} {d.day}, {d.year}"


def block(title: str, when: str, url: str, where: str = "San Francisco") -> str:
    return (f"**{title}**\n📅 Date: {when}\n🕕 Time: 6:00 PM\n📍 Location: {where}\n"
            f"🏷️ Type: Meetup\n🔗 URL: {url}\n")


GOOD_POST = "# AI Events\n\n" + "\n".join([
    block("SF LLM Meetup", day(3), "https://lu.ma/llm"),
    block("Oakland AI Hack Night", day(5), "https://lu.ma/hack", "Oakstop, Oakland"),
    block("Deep Learning Study Group", "Every Tuesday", "https://lu.ma/dl"),
])


def result(cid: str = "c", post: str | None = GOOD_POST, *, exit_code: int | None = 0,
           success: bool | None = None, timed_out: bool = False,
           runtime: float = 0.5) -> CandidateResult:
    ok = exit_code == 0 and not timed_out and post is not None
    return CandidateResult(candidate_id=cid, artifact_content=post, exit_code=exit_code,
                           success=ok if success is None else success, timed_out=timed_out,
                           runtime_seconds=runtime)


# ---------------------------------------------------------------- dates

@pytest.mark.parametrize("text", [
    "January 28, 2026", "Jan 28, 2026", "2026-01-28", "01/28/2026", "28 January 2026",
    "Wednesday, January 28, 2026", "Wed, Jan 28th, 2026", "Jan. 28 2026",
    "📅 Wednesday, January 28, 2026 at 6:00 PM",
])
def test_parse_date_formats(text):
    parsed = parse_date(text)
    assert parsed is not None and parsed.value == date(2026, 1, 28)
    assert parsed.weekday_mismatch is None


@pytest.mark.parametrize("text", ["Every Tuesday", "every other Thursday", "Weekly on Fridays"])
def test_recurring_dates_score_full(text):
    check = check_date(text, REF)
    assert (check.valid, check.score) == (True, 100.0)
    assert "recurring" in check.details


@pytest.mark.parametrize("text", ["", None, "soon", "TBD", "February 30, 2026", "2026-13-01"])
def test_unparseable_dates_score_zero(text):
    check = check_date(text, REF)
    assert (check.valid, check.score) == (False, 0.0)


@pytest.mark.parametrize("offset, valid, score", [
    (0, True, 100.0), (1, True, 100.0), (180, True, 100.0), (181, True, 75.0),
    (400, True, 75.0), (-1, True, 75.0), (-7, True, 75.0), (-8, False, 25.0),
    (-3000, False, 25.0),
])
def test_date_score_bands(offset, valid, score):
    check = check_date((REF_DATE + timedelta(days=offset)).isoformat(), REF)
    assert (check.valid, check.score) == (valid, score)


def test_weekday_that_contradicts_the_date_is_invalid():
    # January 28, 2026 is a Wednesday.
    assert parse_date("Monday, January 28, 2026").weekday_mismatch
    check = check_date("Monday, January 28, 2026", REF)
    assert (check.valid, check.score) == (False, 25.0)
    assert "Wednesday" in check.details


@pytest.mark.parametrize("ref", [
    REF, "2026-01-20T23:59:59Z", "2026-01-20", datetime(2026, 1, 20, 8, tzinfo=UTC),
    date(2026, 1, 20),
])
def test_reference_forms(ref):
    assert reference_date(ref) == REF_DATE
    assert check_date("2026-01-12", ref).score == 25.0  # 8 days before, whatever the form


def test_bad_reference_is_refused():
    with pytest.raises(ValueError):
        reference_date("yesterday")


def test_reference_not_clock_decides():
    old = check_date("2026-01-28", "2025-12-01")
    late = check_date("2026-01-28", "2027-01-01")
    assert (old.score, late.score) == (100.0, 25.0)


# ---------------------------------------------------------------- location, AI, link

@pytest.mark.parametrize("where", [
    "San Francisco", "GitHub HQ, 88 Colin P Kelly Jr St, SF", "Oakland, CA", "Berkeley",
    "Palo Alto", "Mountain View", "San Jose", "Menlo Park", "Sunnyvale", "Redwood City",
    "South San Francisco", "South SF", "Stanford", "Bay Area (location TBA)",
])
def test_bay_area_locations(where):
    check = check_location(where)
    assert (check.valid, check.score) == (True, 100.0)


@pytest.mark.parametrize("where", ["Online", "Virtual (Zoom)"])
def test_online_is_valid_but_not_local(where):
    check = check_location(where)
    assert (check.valid, check.score) == (True, 75.0)


@pytest.mark.parametrize("where, detail", [
    ("Brooklyn, New York", "outside the Bay Area"), ("Manhattan, NY", "outside the Bay Area"),
    ("Seattle, WA", "outside the Bay Area"), ("TBD", "not a recognised"), ("", "no location"),
    (None, "no location"),
])
def test_other_locations_are_invalid(where, detail):
    check = check_location(where)
    assert (check.valid, check.score) == (False, 0.0)
    assert detail in check.details


@pytest.mark.parametrize("title", [
    "SF AI Builders", "AI-powered apps", "Machine Learning Night", "LLM Evals", "GPT hacking",
    "Agents Hackathon", "Deep Learning Study Group", "Neural nets 101", "Data Science Mixer",
    "NLP Brunch", "Generative art", "GenAI Demo Night", "PyTorch SF", "MLOps Summit",
])
def test_ai_keywords(title):
    assert check_ai(title).valid


@pytest.mark.parametrize("title", [
    "Email marketing basics", "Thai cooking class", "Knitting for beginners", "Training day",
    "Wine & Cheese", "Paid parking",
])
def test_not_ai_needs_whole_words(title):
    check = check_ai(title)
    assert (check.valid, check.score) == (False, 0.0)


def test_ai_keyword_in_description_counts():
    assert not check_ai("Tuesday Social").valid
    assert check_ai("Tuesday Social", "Demos of LLM agents").valid


@pytest.mark.parametrize("url", [
    "https://lu.ma/sf-ai", "https://www.meetup.com/x/events/1/", "[RSVP](https://lu.ma/x)",
    "<https://lu.ma/x>",
])
def test_good_links(url):
    check = check_link(url)
    assert (check.valid, check.score) == (True, 100.0)


@pytest.mark.parametrize("url, score, detail", [
    ("http://lu.ma/x", 50.0, "not https"),
    ("htps//lu.ma/x", 0.0, "malformed"),
    ("lu.ma/x", 0.0, "malformed"),
    ("https://lu .ma/x", 0.0, "malformed"),
    ("https://", 0.0, "malformed"),
    ("https://nodot/x", 0.0, "malformed host"),
    ("https://example.com/x", 0.0, "placeholder"),
    ("https://www.example.org/x", 0.0, "placeholder"),
    ("https://events.example.net/x", 0.0, "placeholder"),
    ("https://localhost/x", 0.0, "placeholder"),
    ("https://my.test/x", 0.0, "placeholder"),
    ("https://foo.invalid/x", 0.0, "placeholder"),
    ("https://fake-events.net/x", 0.0, "placeholder"),
    ("https://10.0.0.1/x", 25.0, "IP"),
    ("", 0.0, "no URL"),
])
def test_bad_links(url, score, detail):
    check = check_link(url)
    assert (check.valid, check.score) == (False, score)
    assert detail in check.details


def test_validate_event_all_pass():
    v = validate_event("SF LLM Meetup", day(3), "San Francisco", "https://lu.ma/x",
                       reference=REF)
    assert v.is_valid and v.total_score == 100.0
    assert (v.date_valid, v.location_valid, v.ai_valid, v.link_valid) == (True,) * 4
    d = v.to_dict()
    assert d["title"] == "SF LLM Meetup" and set(d["checks"]) == set(WEIGHTS)
    assert d["checks"]["link"] == {"valid": True, "score": 100.0,
                                   "details": "https link on lu.ma"}


def test_validate_event_weighted_total():
    # past date (25), New York (0), AI ok (100), http (50)
    v = validate_event("GPT Party", "2019-02-14", "New York", "http://lu.ma/x",
                       "a party", reference=REF)
    assert not v.is_valid
    assert v.total_score == round(0.30 * 25 + 0.25 * 0 + 0.25 * 100 + 0.20 * 50, 2)
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)


def test_one_failed_check_makes_event_invalid():
    v = validate_event("Knitting Circle", day(3), "San Francisco", "https://lu.ma/x",
                       reference=REF)
    assert not v.is_valid and not v.ai_valid
    assert v.total_score == 75.0


def test_validate_event_requires_a_reference():
    with pytest.raises(TypeError):
        validate_event("SF LLM Meetup", day(3), "SF", "https://lu.ma/x")  # type: ignore[call-arg]


# ---------------------------------------------------------------- parsing

def test_parse_standard_post():
    events = parse_events(GOOD_POST)
    assert [e.title for e in events] == [
        "SF LLM Meetup", "Oakland AI Hack Night", "Deep Learning Study Group"]
    first = events[0]
    assert (first.date, first.time, first.location, first.type, first.url) == (
        day(3), "6:00 PM", "San Francisco", "Meetup", "https://lu.ma/llm")
    assert events[2].date == "Every Tuesday"


def test_parse_tolerates_bullets_bold_labels_and_links():
    post = """# AI this week

**This week's picks**

1. **LLM Night** 🚀
   - **When:** Jan 28, 2026
   - **Where**: Oakland
   - Type - Talk
   - [RSVP here](https://lu.ma/llm-night)
   Bring a laptop, we build agents.

### **Vision Workshop**
🗓️ 2026-02-02
📍 Berkeley
https://lu.ma/vision

## Later
Some closing words that belong to no event.
"""
    events = parse_events(post)
    assert [e.title for e in events] == ["LLM Night", "Vision Workshop"]
    llm, vision = events
    assert (llm.date, llm.location, llm.type, llm.url) == (
        "Jan 28, 2026", "Oakland", "Talk", "https://lu.ma/llm-night")
    assert "agents" in llm.description
    assert (vision.date, vision.location, vision.url) == (
        "2026-02-02", "Berkeley", "https://lu.ma/vision")
    assert "closing words" not in vision.description


def test_parse_label_variants_and_missing_fields():
    post = ("**Talk A**\nLink: https://lu.ma/a\nVenue: SF\n\n"
            "**Talk B**\n• Date: 2026-01-30\n")
    a, b = parse_events(post)
    assert (a.url, a.location, a.missing()) == ("https://lu.ma/a", "SF", ["date"])
    assert (b.date, b.missing()) == ("2026-01-30", ["url"])


def test_parse_nothing():
    assert parse_events(None) == [] and parse_events("") == []
    assert parse_events("just some text\n**Bold alone**\n") == []


# ---------------------------------------------------------------- gates

def test_all_gates_pass():
    r = result()
    report = check_gates(r, parse_events(r.artifact_content))
    assert report.reason is None and report.gates == {g: True for g in GATES}


def failing(r: CandidateResult) -> dict[str, bool]:
    gates = check_gates(r, parse_events(r.artifact_content)).gates
    return {g: ok for g, ok in gates.items() if not ok}


def test_gate_artifact_missing():
    r = result(post=None, exit_code=0, success=False)
    assert check_gates(r, []).reason == "gate artifact: no artifact produced"
    assert failing(r) == {"artifact": False, "artifact_length": False, "min_events": False,
                          "exit_ok": False}


def test_gate_artifact_too_short():
    r = result(post="# Events!!")  # exactly 10 characters: not longer than 10
    reason = check_gates(r, []).reason
    assert reason.startswith("gate artifact_length: artifact is 10 characters")
    assert set(failing(r)) == {"artifact_length", "min_events"}


def test_gate_event_fields_alone():
    post = GOOD_POST + "\n" + "**No Link Event**\n📅 Date: " + day(4) + "\n📍 Location: SF\n"
    r = result(post=post)
    assert set(failing(r)) == {"event_fields"}
    reason = check_gates(r, parse_events(post)).reason
    assert reason == "gate event_fields: event 4 ('No Link Event') has no url"


def test_gate_min_events_alone():
    post = "# AI\n\n" + block("SF LLM Meetup", day(3), "https://lu.ma/a") + "\n" + block(
        "GPT Night", day(4), "https://lu.ma/b")
    r = result(post=post)
    assert set(failing(r)) == {"min_events"}
    assert check_gates(r, parse_events(post)).reason == (
        "gate min_events: 2 events (need at least 3)")


@pytest.mark.parametrize("kwargs, reason", [
    ({"exit_code": 1, "success": False}, "gate exit_ok: exit code 1"),
    ({"exit_code": None, "success": False, "timed_out": True}, "gate exit_ok: timed out"),
    ({"exit_code": 0, "success": False}, "gate exit_ok: not successful (unknown reason)"),
    ({"exit_code": None, "success": False}, "gate exit_ok: did not run (no exit code)"),
])
def test_gate_exit_ok_alone(kwargs, reason):
    r = result(**kwargs)
    assert set(failing(r)) == {"exit_ok"}
    s = score_result(r, CTX)
    assert (s.qualified, s.disqualified_reason) == (False, reason)
    assert s.quality_score == 100.0  # a disqualified candidate keeps its numbers
    assert (s.success, s.speed_score) == (0.0, 0.0)
    assert s.total_score == 60.0


# ---------------------------------------------------------------- rubric

def test_speed_score_shape():
    assert speed_score(0, 60) == 100.0 and speed_score(1.0, 60) == 100.0
    assert speed_score(30.5, 60) == 50.0
    assert speed_score(60, 60) == 0.0 and speed_score(600, 60) == 0.0
    assert speed_score(-5, 60) == 100.0
    assert speed_score(2, 1) == 0.0 and speed_score(0.5, 1) == 100.0
    values = [speed_score(t / 10, 60) for t in range(0, 700)]
    assert all(0.0 <= v <= 100.0 for v in values)
    assert all(a >= b for a, b in pairwise(values))
    assert values[50] > values[300] > values[590]  # strictly decaying past 1 s


def test_quality_formula():
    vals = [{"is_valid": True, "total_score": 100.0}, {"is_valid": False, "total_score": 60.0}]
    assert quality_score(vals) == 50 * 0.5 + 0.5 * 80.0
    assert quality_score([]) == 0.0


def test_total_formula_and_details():
    s = score_result(result(runtime=30.5), CTX)
    assert (s.success, s.quality_score, s.speed_score) == (100.0, 100.0, 50.0)
    assert s.total_score == 0.2 * 100 + 0.6 * 100 + 0.2 * 50
    assert s.qualified and s.disqualified_reason is None
    d = s.quality_details
    assert (d["event_count"], d["valid_count"], d["duplicate_count"]) == (3, 3, 0)
    assert d["reference_date"] == "2026-01-20" and d["gates"] == s.gates
    assert [e["title"] for e in d["events"]] == [
        "SF LLM Meetup", "Oakland AI Hack Night", "Deep Learning Study Group"]
    assert all(set(e) >= {"title", "is_valid", "total_score", "checks"} for e in d["events"])


def test_mixed_quality_is_computed_exactly():
    post = GOOD_POST + "\n" + block("Cooking Class", "2019-03-14", "https://example.com/x",
                                    "New York")
    s = score_result(result(post=post, runtime=1.0), CTX)
    bad = 0.30 * 25  # only the (old) date earns anything
    assert s.quality_score == round(50 * 3 / 4 + 0.5 * (300 + bad) / 4, 2)
    assert s.total_score == round(20 + 0.6 * s.quality_score + 20, 2)


def test_duplicates_do_not_count_as_valid():
    dup_title = block("sf llm meetup", day(3), "https://www.meetup.com/llm/1")
    dup_url = block("Another LLM Night", day(9), "https://lu.ma/llm/")
    validations = validate_events(parse_events(GOOD_POST + "\n" + dup_title + "\n" + dup_url),
                                  REF)
    assert [v.get("duplicate_of") for v in validations] == [None, None, None, 1, 1]
    assert [v["is_valid"] for v in validations] == [True, True, True, False, False]
    assert validations[3]["total_score"] == 100.0  # valid content, but a repeat


def test_scores_keep_input_order_and_are_deterministic():
    results = [result("b", runtime=3.0), result("a", exit_code=2, success=False),
               result("c", post="# Nope", runtime=0.1)]
    first = [s.to_dict() for s in EventsJudge().score(results, CTX)]
    again = [s.to_dict() for s in EventsJudge().score(results, CTX)]
    assert first == again
    assert [s["candidate_id"] for s in first] == ["b", "a", "c"]
    assert [s["rank"] for s in first] == [0, 0, 0]  # ranking is the caller's job


def test_numbers_are_rounded():
    s = score_result(result(runtime=7.777), CTX)
    for value in (s.speed_score, s.quality_score, s.total_score):
        assert value == round(value, 2)
    assert s.speed_score == round(100 * (1 - 6.777 / 59), 2)


def test_registry_resolves_events_judge():
    judge = get_judge("events")
    assert isinstance(judge, EventsJudge) and judge.name == "events"


# ---------------------------------------------------------------- ranking

def test_rank_disqualified_below_qualified_and_ties_by_id():
    scores = [
        Score("zed", total_score=80.0, qualified=True),
        Score("amy", total_score=80.0, qualified=True),
        Score("top", total_score=99.0, qualified=False),
        Score("low", total_score=10.0, qualified=True),
    ]
    ranked = rank(scores)
    assert [s.candidate_id for s in ranked] == ["amy", "zed", "low", "top"]
    assert [s.rank for s in ranked] == [1, 2, 3, 4]
    assert winner(scores).candidate_id == "amy"


def test_no_qualified_candidate_means_no_winner():
    results = [result("a", exit_code=1, success=False), result("b", post=None, success=False)]
    scores = EventsJudge().score(results, CTX)
    assert not any(s.qualified for s in scores)
    assert winner(scores) is None
    assert [s.candidate_id for s in rank(scores)] == ["a", "b"]  # a kept its quality


def test_judge_scores_rank_end_to_end():
    results = [
        result("slow", runtime=40.0),
        result("fast", runtime=0.2),
        result("crash", exit_code=1, success=False, runtime=0.1),
    ]
    ranked = rank(EventsJudge().score(results, CTX))
    assert [s.candidate_id for s in ranked] == ["fast", "slow", "crash"]
    assert winner(ranked).candidate_id == "fast"
