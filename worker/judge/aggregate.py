"""A run of K repeated trials: from K x N trial results to the run's ForgeResult.

Pure (no I/O, no clock, no random numbers) and independent of the order results arrive
in: results are grouped by (candidate, trial), the first of a duplicated pair kept (a
redelivered task stores one record, see ``worker.tasks._first_finished``). So the
embedded and the distributed chord body give the same verdict for the same results.

Each trial is judged on its own (a trial of every candidate is scored exactly like a
one-trial run), then each candidate's K scores are summarised and the run decided by
``worker.judge.trials`` (mean, Student-t 95% interval, pass rate, pass^K, flaky,
"statistically tied"; docs/trials.md). The ForgeResult then describes each candidate as
a whole:

* ``scores``: one Score per candidate: success, quality and speed are the means over its
  trials, ``total_score`` the mean (2 decimals), ``qualified`` at least one trial passed,
  ``gates`` those of its representative trial, ``rank`` its rank by mean;
* ``results``: its representative trial's result: the best qualified trial (highest
  total, then earliest), else trial 1; its post is the candidate's post;
* ``winner_id``: the verdict's winner (in a tie, chosen by the documented rule).

Every trial's own result and score stay in ``trial_results``/``trial_scores``.
"""

from __future__ import annotations

import copy
from typing import Any

from worker.judge import JudgeContext, get_judge, rank
from worker.judge.from_run import run_fields
from worker.judge.stats import mean
from worker.judge.trials import decide, summarize
from worker.records import CandidateInfo, CandidateResult, ForgeResult, RunSpec, Score

MISSING = "No result reached the callback"


def _grouped(results: list[dict[str, Any]], run: RunSpec,
             ) -> dict[tuple[str, int], CandidateResult]:
    found: dict[tuple[str, int], CandidateResult] = {}
    for item in results:
        if isinstance(item, dict) and "candidate_id" in item:
            r = CandidateResult.from_dict(item)
            if 0 <= r.trial < run.trials:
                found.setdefault((r.candidate_id, r.trial), r)
    out = {}
    for c in run.candidates:
        for k in range(run.trials):
            out[(c.id, k)] = found.get((c.id, k)) or CandidateResult(
                candidate_id=c.id, trial=k, error_message=MISSING)
    return out


def _candidate_score(cid: str, scores: list[Score], summary, representative: int) -> Score:
    """The candidate as a whole (see the module docstring)."""
    rep = scores[representative]
    reason = None
    if not summary.qualified:
        reason = f"no trial passed the gates (trial 1: {scores[0].disqualified_reason})"
    return Score(
        candidate_id=cid,
        success=round(mean([s.success for s in scores]), 2),
        quality_score=round(mean([s.quality_score for s in scores]), 2),
        speed_score=round(mean([s.speed_score for s in scores]), 2),
        total_score=round(summary.mean, 2),
        qualified=summary.qualified,
        gates=dict(rep.gates),
        disqualified_reason=reason,
        quality_details={"trials": summary.trials, "representative_trial": representative + 1,
                         "ci_low": summary.ci_low, "ci_high": summary.ci_high,
                         "pass_rate": summary.pass_rate, "pass_all": summary.pass_all,
                         "flaky": summary.flaky},
        rank=summary.rank,
    )


def build_trials_result(results: list[dict[str, Any]], run: RunSpec) -> ForgeResult:
    """Judge every trial, summarise each candidate, decide the run (pure: no I/O)."""
    grouped = _grouped(results, run)
    judge = get_judge(run.judge)
    context = JudgeContext(run.objective, run.timestamp, run.timeout, run.speed)
    trial_score: dict[tuple[str, int], Score] = {}
    for k in range(run.trials):
        ordered = [grouped[(c.id, k)] for c in run.candidates]
        for s in rank(judge.score(ordered, context)):  # rank: the trial's own order
            trial_score[(s.candidate_id, k)] = s
    summaries = []
    for c in run.candidates:
        scores = [trial_score[(c.id, k)] for k in range(run.trials)]
        runtimes = [grouped[(c.id, k)].runtime_seconds for k in range(run.trials)]
        summaries.append(summarize(c.id, scores, runtimes))
    verdict = decide(summaries)
    by_id = {s.candidate_id: s for s in verdict.ranking}

    scores_out, results_out, trial_results, trial_scores = [], [], [], []
    candidates = []
    for c in run.candidates:
        summary = by_id[c.id]
        scores = [trial_score[(c.id, k)] for k in range(run.trials)]
        rep = (summary.best_trial or 1) - 1
        scores_out.append(_candidate_score(c.id, scores, summary, rep))
        results_out.append(copy.deepcopy(grouped[(c.id, rep)]))
        for k in range(run.trials):
            trial_results.append(grouped[(c.id, k)])
            s = copy.deepcopy(scores[k])
            s.trial = k
            trial_scores.append(s)
        info = CandidateInfo(**c.to_dict())
        info.artifact = (f"{c.id}/discord_post.md"
                         if results_out[-1].artifact_content is not None else None)
        candidates.append(info)
    scores_out.sort(key=lambda s: s.rank)
    winner = by_id.get(verdict.winner_id) if verdict.winner_id else None
    win_result = next((r for r in results_out if winner and r.candidate_id == winner.candidate_id),
                      None)
    decided = verdict.to_dict()
    decided.pop("ranking", None)
    no_cpu = sorted({f"{r.candidate_id}#{r.trial + 1}" for r in trial_results
                     if r.success and r.cpu_seconds is None})
    return ForgeResult(
        **run_fields(run, no_cpu),
        candidates=candidates,
        scores=scores_out,
        winner_id=verdict.winner_id,
        winner_score=round(winner.mean, 2) if winner else None,
        winner_artifact=win_result.artifact_content if win_result else None,
        results=results_out,
        trials=run.trials,
        trial_results=trial_results,
        trial_scores=trial_scores,
        trial_summaries=[s.to_dict() for s in verdict.ranking],
        verdict=decided,
    )
