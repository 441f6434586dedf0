"""A seeded simulated season: weekly runs of one competition with candidates of known
strength, as finished ForgeResults a real store takes (``store.write_finished``).

Each week every candidate scores N(true mean, sd), clipped to 0..100, and fails the gates
with a small probability (score 0..20, not qualified); the ranking is the judge's rule
(qualified first, by score) and the winner is rank 1 if it qualified.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from worker.records import CandidateInfo, CandidateResult, ForgeResult, Score

STRENGTHS = {"alpha": ("Agent Alpha", 70.0), "beta": ("Agent Beta", 85.0),
             "gamma": ("Agent Gamma", 78.0), "delta": ("Agent Delta", 55.0),
             "epsilon": ("Agent Epsilon", 62.0)}
START = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)  # a Monday, 09:00 in Los Angeles


def week(k: int, rng: random.Random, competition: str, strengths=STRENGTHS, sd: float = 6.0,
         fail: float = 0.05, drop: dict[str, float] | None = None) -> ForgeResult:
    """Week ``k``'s run. ``drop``: points taken off a candidate's true mean this week."""
    run_id = f"{competition}-w{k:02d}"
    scores: dict[str, tuple[float, bool]] = {}
    for cid, (_, mu) in strengths.items():
        mu -= (drop or {}).get(cid, 0.0)
        if rng.random() < fail:
            scores[cid] = (round(rng.uniform(0, 20), 2), False)
        else:
            scores[cid] = (round(min(100.0, max(0.0, rng.gauss(mu, sd))), 2), True)
    order = sorted(strengths, key=lambda c: (not scores[c][1], -scores[c][0], c))
    when = (START + timedelta(weeks=k)).isoformat(timespec="seconds")
    ranked = [Score(candidate_id=c, success=100.0 if scores[c][1] else 0.0,
                    total_score=scores[c][0], qualified=scores[c][1],
                    gates={"events": scores[c][1]}, rank=i,
                    disqualified_reason=None if scores[c][1] else "gate events")
              for i, c in enumerate(order, start=1)]
    winner = order[0] if scores[order[0]][1] else None
    return ForgeResult(
        run_id=run_id, objective="Generate weekly 'AI Events in San Francisco' post",
        timestamp=when, execution_mode="local",
        candidates=[CandidateInfo(id=c, name=n, script=f"agent_{c}.py")
                    for c, (n, _) in strengths.items()],
        scores=ranked, winner_id=winner,
        winner_score=scores[winner][0] if winner else None,
        winner_artifact=f"# Post by {winner}\n" if winner else None,
        artifacts_dir=f"/nowhere/{run_id}",
        results=[CandidateResult(candidate_id=c, success=scores[c][1], runtime_seconds=1.0,
                                 started_at=when, finished_at=when)
                 for c in strengths],
        competition=competition)


def season(weeks: int, seed: int, competition: str = "weekly-sf-ai-events",
           regress: str | None = None, fail: float = 0.05) -> list[ForgeResult]:
    """``weeks`` weekly runs; ``regress``: a candidate whose last week drops 30 points."""
    rng = random.Random(seed)
    return [week(k, rng, competition, fail=fail,
                 drop={regress: 30.0} if regress and k == weeks - 1 else None)
            for k in range(weeks)]
