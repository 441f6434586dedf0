"""The events judge: hard gates, then a 0-100 rubric, for "AI events in SF" posts.

Gates (pass/fail, all recorded in ``Score.gates``; the first failure is the
``disqualified_reason``, and a disqualified candidate keeps its numbers but ranks below
every qualified one):
    artifact         the candidate left a post
    artifact_length  the post is longer than 10 characters
    event_fields     every event has a title, a date and a URL
    min_events       at least 3 events
    exit_ok          success, exit code 0, no timeout

Rubric (each part 0-100, total rounded to 2 decimals):
    total   = 0.2 * success + 0.6 * quality + 0.2 * speed
    success = 100 if the run succeeded (exit 0, no timeout, artifact) else 0
    quality = 50 * valid_events / events + 0.5 * mean(event total_score); 0 with no events.
              An event repeating an earlier one (same title and date, or same URL) counts
              as not valid: padding a post with duplicates must not pay.
    speed   = 100 * max(0, 1 - (t - 1) / (timeout - 1)) for t seconds: 100 up to 1 s,
              then linear down to 0 at the deadline. t is the run's wall time, or with
              ``speed = "cpu"`` (``context.speed``) the CPU time of the candidate's
              processes, which a CPU hog next to it on the worker cannot inflate (a result
              without a CPU figure falls back to its wall time). A failed run delivered
              nothing, so its speed is 0.

Pure and deterministic: dates are judged against ``context.reference_time`` (the run's
timestamp), never the clock, so re-scoring a run gives the same numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from worker.judge import JudgeContext
from worker.judge.parse import ParsedEvent, parse_events
from worker.judge.validate import EventValidation, parse_date, reference_date, validate_event
from worker.records import CandidateResult, Score

W_SUCCESS, W_QUALITY, W_SPEED = 0.2, 0.6, 0.2
MIN_ARTIFACT_CHARS = 10  # the artifact must be longer than this
MIN_EVENTS = 3
FAST_SECONDS = 1.0
GATES = ("artifact", "artifact_length", "event_fields", "min_events", "exit_ok")


@dataclass(frozen=True)
class GateReport:
    gates: dict[str, bool]
    reason: str | None  # the first failed gate, or None when all pass


def succeeded(result: CandidateResult) -> bool:
    return bool(result.success and not result.timed_out and result.exit_code == 0
                and result.artifact_content is not None)


def check_gates(result: CandidateResult, events: list[ParsedEvent]) -> GateReport:
    text = result.artifact_content
    why: dict[str, str] = {}
    if text is None:
        why["artifact"] = "no artifact produced"
    if len(text or "") <= MIN_ARTIFACT_CHARS:
        why["artifact_length"] = (f"artifact is {len(text or '')} characters "
                                  f"(need more than {MIN_ARTIFACT_CHARS})")
    for i, ev in enumerate(events, start=1):
        missing = ev.missing()
        if missing:
            why["event_fields"] = f"event {i} ({ev.title!r}) has no {', '.join(missing)}"
            break
    if len(events) < MIN_EVENTS:
        why["min_events"] = f"{len(events)} events (need at least {MIN_EVENTS})"
    if result.timed_out:
        why["exit_ok"] = "timed out"
    elif result.exit_code is None:
        why["exit_ok"] = f"did not run ({result.error_message or 'no exit code'})"
    elif result.exit_code != 0:
        why["exit_ok"] = f"exit code {result.exit_code}"
    elif not result.success:
        why["exit_ok"] = f"not successful ({result.error_message or 'unknown reason'})"
    gates = {g: g not in why for g in GATES}
    first = next((g for g in GATES if g in why), None)
    return GateReport(gates, f"gate {first}: {why[first]}" if first else None)


def speed_score(runtime_seconds: float, timeout: float) -> float:
    """100 up to FAST_SECONDS, then linear to 0 at the deadline (monotone, 0-100)."""
    t = max(0.0, float(runtime_seconds))
    if t <= FAST_SECONDS:
        return 100.0
    span = float(timeout) - FAST_SECONDS
    if span <= 0:
        return 0.0
    return round(100.0 * max(0.0, 1.0 - (t - FAST_SECONDS) / span), 2)


def speed_seconds(result: CandidateResult, context: JudgeContext) -> float:
    """The time the speed score measures: CPU time when the competition asks for it."""
    if context.speed == "cpu" and result.cpu_seconds is not None:
        return result.cpu_seconds
    return result.runtime_seconds


def _dedupe_key(ev: ParsedEvent) -> tuple[str, str]:
    parsed = parse_date(ev.date)
    when = parsed.value.isoformat() if parsed and parsed.value else ev.date.strip().lower()
    return re.sub(r"\W+", "", ev.title.casefold()), when


def _url_key(ev: ParsedEvent) -> str:
    return ev.url.strip().lower().rstrip("/")


def validate_events(events: list[ParsedEvent], reference: str) -> list[dict[str, Any]]:
    """Per-event validation dicts; repeats are marked ``duplicate_of`` and not valid."""
    seen_keys: dict[tuple[str, str], int] = {}
    seen_urls: dict[str, int] = {}
    out = []
    for i, ev in enumerate(events, start=1):
        v: EventValidation = validate_event(ev.title, ev.date, ev.location, ev.url,
                                            ev.description, reference=reference)
        item = v.to_dict()
        key, url = _dedupe_key(ev), _url_key(ev)
        first = seen_keys.get(key) or (seen_urls.get(url) if url else None)
        if first:
            item["is_valid"] = False
            item["duplicate_of"] = first
        seen_keys.setdefault(key, i)
        if url:
            seen_urls.setdefault(url, i)
        out.append(item)
    return out


def quality_score(validations: list[dict[str, Any]]) -> float:
    if not validations:
        return 0.0
    share = sum(1 for v in validations if v["is_valid"]) / len(validations)
    mean = sum(v["total_score"] for v in validations) / len(validations)
    return round(50.0 * share + 0.5 * mean, 2)


def score_result(result: CandidateResult, context: JudgeContext) -> Score:
    events = parse_events(result.artifact_content)
    gates = check_gates(result, events)
    validations = validate_events(events, context.reference_time)
    ok = succeeded(result)
    success = 100.0 if ok else 0.0
    quality = quality_score(validations)
    speed = speed_score(speed_seconds(result, context), context.timeout) if ok else 0.0
    total = round(W_SUCCESS * success + W_QUALITY * quality + W_SPEED * speed, 2)
    return Score(
        candidate_id=result.candidate_id,
        success=success,
        quality_score=quality,
        speed_score=speed,
        total_score=total,
        qualified=gates.reason is None,
        gates=gates.gates,
        disqualified_reason=gates.reason,
        quality_details={
            "event_count": len(events),
            "valid_count": sum(1 for v in validations if v["is_valid"]),
            "duplicate_count": sum(1 for v in validations if "duplicate_of" in v),
            "reference_date": reference_date(context.reference_time).isoformat(),
            "events": validations,
            "gates": dict(gates.gates),
        },
    )


class EventsJudge:
    """Scores each result alone (same order as given); ranking is ``worker.judge.rank``."""

    name = "events"

    def score(self, results: list[CandidateResult], context: JudgeContext) -> list[Score]:
        return [score_result(r, context) for r in results]
