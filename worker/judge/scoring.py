"""Scoring a run: its candidates' results, judged and ranked, as one ``ForgeResult``.

Pure (no I/O, no clock): the chord body, a redelivered body and ``forge resume`` score
the same results to the same record. A candidate whose result never arrived is scored
as a failure, so every candidate of the run is on the leaderboard.
"""

from __future__ import annotations

from typing import Any

from worker.judge import JudgeContext, get_judge, rank, winner
from worker.judge.aggregate import build_trials_result
from worker.judge.from_run import run_fields
from worker.records import CandidateResult, ForgeResult, RunSpec


def build_forge_result(results: list[dict[str, Any]], run: RunSpec) -> ForgeResult:
    """Score and rank the results of a run (pure: no I/O)."""
    if run.trials > 1:  # K trials per candidate: mean, interval, verdict
        return build_trials_result(results, run)
    by_id: dict[str, CandidateResult] = {}
    for item in results:
        if isinstance(item, dict) and "candidate_id" in item:
            r = CandidateResult.from_dict(item)
            by_id.setdefault(r.candidate_id, r)
    ordered = []
    for c in run.candidates:
        ordered.append(by_id.get(c.id) or CandidateResult(
            candidate_id=c.id, error_message="No result reached the callback"))
    judge = get_judge(run.judge)
    scores = rank(judge.score(ordered, JudgeContext(run.objective, run.timestamp, run.timeout,
                                                    run.speed)))
    best = winner(scores)
    candidates = []
    for c in run.candidates:
        r = by_id.get(c.id)
        info = type(c)(**c.to_dict())
        info.artifact = f"{c.id}/discord_post.md" if r and r.artifact_content is not None else None
        candidates.append(info)
    win_result = by_id.get(best.candidate_id) if best else None
    no_cpu = [r.candidate_id for r in ordered if r.success and r.cpu_seconds is None]
    return ForgeResult(
        **run_fields(run, no_cpu),
        candidates=candidates,
        scores=scores,
        winner_id=best.candidate_id if best else None,
        winner_score=best.total_score if best else None,
        winner_artifact=win_result.artifact_content if win_result else None,
        results=ordered,
    )
