"""Pluggable judges: a competition names one; the events judge is the default.

A judge turns result records into ``Score`` objects. Ranking is shared by every judge
so that its rules hold everywhere: disqualified candidates rank below every qualified
one whatever their numbers, ties break deterministically, and no qualified candidate
means no winner.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

from worker.records import CandidateResult, Score

# name -> "module:Class"; a competition may also name "package.module:Class" itself.
JUDGES = {
    "events": "worker.judge.events:EventsJudge",
}


@dataclass(frozen=True)
class JudgeContext:
    objective: str
    reference_time: str  # ISO timestamp of the run: re-scoring gives the same numbers
    timeout: int = 60
    speed: str = "wall"  # the speed score measures "wall" time or the candidate's "cpu" time


class Judge(Protocol):
    name: str

    def score(self, results: list[CandidateResult], context: JudgeContext) -> list[Score]: ...


def get_judge(name: str) -> Judge:
    target = JUDGES.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"unknown judge {name!r}: use one of {sorted(JUDGES)} or 'package.module:Class'"
        )
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)()


def rank(scores: list[Score]) -> list[Score]:
    """Qualified first by total (desc), then by id for a deterministic tie-break."""
    ordered = sorted(
        scores, key=lambda s: (not s.qualified, -round(s.total_score, 6), s.candidate_id)
    )
    for i, s in enumerate(ordered, start=1):
        s.rank = i
    return ordered


def winner(scores: list[Score]) -> Score | None:
    ranked = rank(list(scores))
    return ranked[0] if ranked and ranked[0].qualified else None
