"""Repeated trials: one candidate's K scores as a mean with a 95% interval, and a verdict.

Agents are stochastic, so one run crowns whoever got lucky that minute. A candidate that
runs K times is summarised by the mean of its K total scores (failed trials included:
the mean is what one attempt is worth), a confidence interval for that mean, its pass
rate, pass^K (every trial passed the gates), and ``flaky``: its trials disagree on the
gates (some pass and some fail, or they fail on different gates). It is ``qualified``
when at least one trial passed, so it has a post to offer; with K = 1 that is exactly
``Score.qualified``.

Why a Student-t interval and not a bootstrap. In simulation the 95% percentile
bootstrap covered the true mean in 76% of samples at K=3 and 82% at K=5 (BCa no better):
resamples never leave the range of the K values, so it cannot cover more than
1 - 2^(1-K) (75% at K=3). The t interval covers 95% at every K for normal scores, and
88% (K=5), 90% (K=10), 92% (K=20) for scores piled against the 100 ceiling (an
exponential tail), where the percentile bootstrap does worse still at small K. Trials
are few (K = 3..10), so the t interval is the honest one. It needs no random numbers:
the same scores give the same interval in every process, whatever the order the trials
finished in. It is clipped to the score range. Rare failures (one trial in ten scoring
near 0) defeat every method at small K: the interval can only describe the trials that
happened.

What "statistically tied" means. Candidates rank by mean (then by id, exactly like
``worker.judge.rank``). The leader is tied with every qualified candidate whose mean it
does not beat at 95%: Welch's interval for the difference of the two means contains
zero. Welch's, because trials of different candidates are not paired (they ran in
different sandboxes at different moments, so trial k of one has nothing to do with
trial k of another) and their spreads differ. Not "the two intervals overlap", which
separates only at about the 99.5% level: in simulation (K=5, sd 5, 2000 runs) overlap
called a candidate three standard deviations better "tied" in 23% of runs, Welch's in
3%. Two equal candidates come out tied in 96% of runs (95% by design, a little more as
the degrees of freedom are rounded down). The verdict carries the leader's margin over
the runner-up with its interval, so a report can show why two overlapping intervals
still give a clear winner.

Who gets the post in a tie. Among the tied contenders: the higher pass rate (the agent
that delivers more reliably), then the higher mean, then the lower median runtime, then
the candidate id. Outside a tie the leader wins.

One trial (K = 1). The interval collapses to the point, ranking and winner are exactly
``worker.judge.rank``/``winner``, and the verdict is ``single-trial``: with one trial
there is no spread, so a tie can be neither shown nor ruled out, and none is declared.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from worker.judge.stats import check_confidence, mean, stdev, t_interval, welch_interval
from worker.records import Score

CONFIDENCE = 0.95
SCORE_BOUNDS = (0.0, 100.0)  # the range of a total (the events judge's rubric)

Status = Literal["clear", "tied", "single-trial", "no-winner"]
CLEAR: Status = "clear"
TIED: Status = "tied"
SINGLE_TRIAL: Status = "single-trial"
NO_WINNER: Status = "no-winner"


@dataclass(frozen=True)
class TrialSummary:
    """One candidate over its K trials. ``scores`` are the trials' total scores in trial
    order (trial 1 first); ``best_trial`` is the 1-based number of its best qualified
    trial (highest total, then earliest), whose artifact stands for the candidate."""

    candidate_id: str
    scores: tuple[float, ...]
    mean: float
    ci_low: float
    ci_high: float
    median: float
    stdev: float
    passes: int
    pass_rate: float
    pass_all: bool  # pass^K: every trial passed the gates
    flaky: bool  # the trials disagree on the gates
    gate_pass_rates: dict[str, float] = field(default_factory=dict)
    median_runtime: float | None = None
    best_trial: int | None = None
    confidence: float = CONFIDENCE
    rank: int = 0

    @property
    def trials(self) -> int:
        return len(self.scores)

    @property
    def qualified(self) -> bool:
        """At least one trial passed the gates (K = 1: exactly ``Score.qualified``)."""
        return self.passes > 0

    def to_dict(self) -> dict[str, Any]:
        return {"candidate_id": self.candidate_id, "scores": list(self.scores),
                "mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "median": self.median, "stdev": self.stdev, "passes": self.passes,
                "pass_rate": self.pass_rate, "pass_all": self.pass_all, "flaky": self.flaky,
                "gate_pass_rates": dict(self.gate_pass_rates),
                "median_runtime": self.median_runtime, "best_trial": self.best_trial,
                "confidence": self.confidence, "rank": self.rank, "trials": self.trials}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSummary:
        names = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["scores"] = tuple(kwargs.get("scores") or ())
        kwargs["gate_pass_rates"] = dict(kwargs.get("gate_pass_rates") or {})
        return cls(**kwargs)


def summarize(candidate_id: str, scores: Sequence[Score],
              runtimes: Sequence[float] | None = None, *, confidence: float = CONFIDENCE,
              bounds: tuple[float, float] | None = SCORE_BOUNDS) -> TrialSummary:
    """Aggregate one candidate's trial ``scores`` (trial order) into a summary.

    ``runtimes`` (seconds per trial, same order) only break ties between contenders.
    """
    check_confidence(confidence)
    if not scores:
        raise ValueError(f"candidate {candidate_id!r} has no trials to summarise")
    if runtimes is not None and len(runtimes) != len(scores):
        raise ValueError(f"candidate {candidate_id!r}: {len(runtimes)} runtimes for "
                         f"{len(scores)} trials")
    stray = sorted({s.candidate_id for s in scores} - {candidate_id})
    if stray:
        raise ValueError(f"candidate {candidate_id!r} was given scores of {stray}")
    totals = tuple(float(s.total_score) for s in scores)
    low, high = t_interval(sorted(totals), confidence, bounds)
    passes = sum(1 for s in scores if s.qualified)
    gate_names = sorted({g for s in scores for g in s.gates})
    gate_rates = {g: sum(1 for s in scores if s.gates.get(g)) / len(scores)
                  for g in gate_names}
    outcomes = {(s.qualified, tuple(sorted(s.gates.items()))) for s in scores}
    best = max((k for k, s in enumerate(scores) if s.qualified),
               key=lambda k: (totals[k], -k), default=None)
    return TrialSummary(
        candidate_id=candidate_id,
        scores=totals,
        mean=mean(totals),
        ci_low=low,
        ci_high=high,
        median=statistics.median(totals),
        stdev=stdev(sorted(totals)),
        passes=passes,
        pass_rate=passes / len(scores),
        pass_all=passes == len(scores),
        flaky=len(outcomes) > 1,
        gate_pass_rates=gate_rates,
        median_runtime=statistics.median(runtimes) if runtimes else None,
        best_trial=None if best is None else best + 1,
        confidence=confidence,
    )


def summarize_all(scores: Iterable[Score], runtimes: dict[str, Sequence[float]] | None = None,
                  **kwargs: Any) -> list[TrialSummary]:
    """Group trial scores by candidate (keeping trial order) and summarise each."""
    by_candidate: dict[str, list[Score]] = {}
    for s in scores:
        by_candidate.setdefault(s.candidate_id, []).append(s)
    runtimes = runtimes or {}
    return [summarize(cid, group, runtimes.get(cid), **kwargs)
            for cid, group in by_candidate.items()]


def rank_summaries(summaries: Iterable[TrialSummary]) -> list[TrialSummary]:
    """Qualified (some trial passed) first, by mean (desc), then by id: the rule of
    ``worker.judge.rank`` with the mean in place of the one total. Ranks are set."""
    ordered = sorted(summaries,
                     key=lambda s: (not s.qualified, -round(s.mean, 6), s.candidate_id))
    return [replace(s, rank=i) for i, s in enumerate(ordered, start=1)]


def _tie_break_key(s: TrialSummary) -> tuple:
    runtime = s.median_runtime if s.median_runtime is not None else float("inf")
    return (-s.pass_rate, -round(s.mean, 6), runtime, s.candidate_id)


@dataclass(frozen=True)
class Margin:
    """How far ``leader`` is ahead of ``other``: the difference of their means and its
    Welch interval. ``separated``: the interval excludes zero."""

    leader: str
    other: str
    difference: float
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def separated(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"leader": self.leader, "other": self.other, "difference": self.difference,
                "low": self.low, "high": self.high, "confidence": self.confidence,
                "separated": self.separated}


def margin(leader: TrialSummary, other: TrialSummary, confidence: float = CONFIDENCE,
           ) -> Margin:
    """The leader's margin over ``other`` (both need at least two trials)."""
    diff, low, high = welch_interval(leader.scores, other.scores, confidence)
    return Margin(leader.candidate_id, other.candidate_id, diff, low, high, confidence)


@dataclass(frozen=True)
class Verdict:
    """The ranking by mean and who gets the post. ``contenders``: the leader and every
    candidate statistically tied with it (the leader alone when the verdict is clear).
    ``margin``: the leader over the runner-up (None without two testable candidates)."""

    ranking: tuple[TrialSummary, ...]
    status: Status
    winner_id: str | None
    contenders: tuple[str, ...]
    reason: str
    margin: Margin | None = None

    @property
    def tied(self) -> bool:
        return self.status == TIED

    @property
    def winner(self) -> TrialSummary | None:
        return next((s for s in self.ranking if s.candidate_id == self.winner_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "tied": self.tied, "winner_id": self.winner_id,
                "contenders": list(self.contenders), "reason": self.reason,
                "margin": self.margin.to_dict() if self.margin else None,
                "ranking": [s.to_dict() for s in self.ranking]}


def _decided_by(winner: TrialSummary, other: TrialSummary) -> str:
    if winner.pass_rate != other.pass_rate:
        return (f"higher pass rate ({winner.passes}/{winner.trials} against "
                f"{other.passes}/{other.trials})")
    if round(winner.mean, 6) != round(other.mean, 6):
        return f"higher mean ({winner.mean:.2f} against {other.mean:.2f})"
    if winner.median_runtime != other.median_runtime and winner.median_runtime is not None:
        runtime = "none" if other.median_runtime is None else f"{other.median_runtime:.2f} s"
        return f"lower median runtime ({winner.median_runtime:.2f} s against {runtime})"
    return "candidate id (nothing else separates them)"


def decide(summaries: Iterable[TrialSummary], confidence: float = CONFIDENCE) -> Verdict:
    """Rank by mean and decide the verdict (see the module docstring for the rules)."""
    ranking = tuple(rank_summaries(summaries))
    ids = [s.candidate_id for s in ranking]
    if len(set(ids)) != len(ids):
        raise ValueError("a candidate appears twice: summarise all its trials together "
                         "(summarize_all groups them)")
    qualified = [s for s in ranking if s.qualified]
    if not qualified:
        return Verdict(ranking, NO_WINNER, None, (), "no candidate passed the gates")
    leader = qualified[0]
    if len(qualified) == 1:
        return Verdict(ranking, CLEAR, leader.candidate_id, (leader.candidate_id,),
                       "the only candidate that passed the gates")
    runner_up = qualified[1]
    if leader.trials < 2 or runner_up.trials < 2:
        return Verdict(ranking, SINGLE_TRIAL, leader.candidate_id, (leader.candidate_id,),
                       "highest score; one trial cannot show or rule out a tie")
    ahead = margin(leader, runner_up, confidence)
    tied = [leader] + [s for s in qualified[1:] if s.trials >= 2
                       and not margin(leader, s, confidence).separated]
    if len(tied) == 1:
        return Verdict(ranking, CLEAR, leader.candidate_id, (leader.candidate_id,),
                       f"highest mean, ahead of {runner_up.candidate_id} by "
                       f"{ahead.difference:.2f} ({confidence:.0%} interval "
                       f"{ahead.low:.2f} to {ahead.high:.2f})", ahead)
    chosen = min(tied, key=_tie_break_key)
    others = sorted((s for s in tied if s is not chosen), key=_tie_break_key)
    names = ", ".join(s.candidate_id for s in others)
    return Verdict(ranking, TIED, chosen.candidate_id, tuple(s.candidate_id for s in tied),
                   f"statistically tied with {names} (the {confidence:.0%} interval of the "
                   f"difference includes zero); post goes to {chosen.candidate_id} by "
                   f"{_decided_by(chosen, others[0])}", ahead)
