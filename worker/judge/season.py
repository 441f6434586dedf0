"""Season standings: ratings, wins, streaks, trends and regressions over a competition's runs.

Input is one typed record per run (:class:`SeasonRun`: run id, timestamp, each
candidate's rank, total score and whether it qualified, and the post's winner), so this
module knows nothing of the store; :meth:`SeasonRun.from_result` adapts a ``ForgeResult``.

Why Bradley-Terry and not Elo. Elo is an online update: its result depends on the order
of the runs and on an arbitrary K factor, and resampling runs for an interval breaks its
sequence. Bradley-Terry (P(i beats j) = p_i / (p_i + p_j)) is the maximum-likelihood fit
of every pairwise result at once: independent of run order, no tuning constant, and the
bootstrap over runs is natural. Each run contributes every pair of its candidates: the
better-ranked one wins (equal ranks: half a win each).

Prior. One virtual drawn game between every pair of the season's candidates (half a win
each way). It keeps every rating finite when a candidate wins every comparison (the plain
maximum-likelihood estimate is infinite then), links candidates that never met, and
weighs one game against the R real ones of each pair, so it only matters in short
seasons, where shrinking towards the middle is the honest reading of little data.

Scale. rating = 1500 + 400 * log10(strength), strengths normalised to a geometric mean of
one: the season's average candidate is 1500 and P(i beats j) = 1 / (1 + 10^((R_j -
R_i) / 400)), the Elo expectation, so the numbers read like chess ratings.

Fit. Newton's method on the log-strengths (the log-likelihood is concave; a step that
does not raise it is halved), solved by Cholesky with the one free direction (adding a
constant to every log-strength) pinned. Hunter's MM iteration took hundreds to thousands
of sweeps on 50 candidates far apart; Newton takes six to eight. Runs are grouped by who
took part, so candidates joining or leaving mid-season cost nothing extra.

Intervals. A percentile bootstrap over runs (runs, not pairs, are the independent units:
the pairs of one run share its conditions), 200 resamples by default. Each resample
starts from the full fit and iterates with the full fit's inverse Hessian (a chord
method: its first step is a sum of per-run vectors computed once, later ones are
rescaled by each candidate's change of curvature), falling back to Newton if that
stalls. The seed is a hash of the runs themselves: the same season always
gives the same intervals, in any process and any input order. With one run there is
nothing to resample, and the interval is the point; a candidate absent from a resample
keeps only the prior there, which widens the interval of one seen in few runs.

Regression. A candidate regressed when its score in the latest run falls below the
``confidence`` prediction interval of its previous ``regression_window`` scores (mean -
t * s * sqrt(1 + 1/n)): where one more score from the same process would fall. Not the
confidence interval of their mean, which narrows with every run and would flag ordinary
noise; with normal scores a false alarm has probability (1 - confidence) / 2. It needs
``min_history`` previous runs, and a drop of less than ``min_drop`` points (of 100)
never counts, so a candidate whose score never varied does not flag on rounding.

Trend. The least-squares slope of a candidate's last ``trend_window`` scores, in points
per run (None with fewer than three).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from operator import add, mul, sub
from typing import Any

from worker.judge.stats import check_confidence, mean, percentile, prediction_interval, slope
from worker.records import ForgeResult

BASE_RATING = 1500.0
RATING_PER_NAT = 400.0 / math.log(10.0)  # 400 points per factor of ten in strength
PRIOR_GAMES = 1.0  # virtual drawn games between every pair of candidates
CONFIDENCE = 0.95
RESAMPLES = 200
REGRESSION_WINDOW = 8
MIN_HISTORY = 3
MIN_DROP = 1.0
TREND_WINDOW = 6
# A bootstrap resample's fit stops within about 0.002 nats of its exact solution: under
# one rating point (median 0.2), against a Monte Carlo error of several points in a 95%
# percentile end at 200 resamples. Tighter costs another pass over every pair.
REFIT_TOL = 2e-3


# ------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Placing:
    """One candidate in one run (``name``: display name; empty means the id)."""

    candidate_id: str
    rank: int
    total_score: float
    qualified: bool
    name: str = ""


def _parse_when(text: str, what: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {text!r} is not an ISO 8601 date or timestamp "
                         f"(e.g. 2026-01-31 or 2026-01-31T09:00:00+00:00)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@dataclass(frozen=True)
class SeasonRun:
    """One run of the competition. ``winner_id`` is the post's winner (None: nobody
    qualified); it can differ from rank 1 when trials left the top statistically tied."""

    run_id: str
    timestamp: str  # ISO 8601, as in ForgeResult.timestamp
    placings: tuple[Placing, ...]
    winner_id: str | None
    when: datetime = field(init=False, repr=False, compare=False)  # timestamp, in UTC

    def __post_init__(self) -> None:
        if not self.run_id:
            raise ValueError("a season run needs a run id")
        object.__setattr__(self, "placings", tuple(self.placings))
        object.__setattr__(self, "when", _parse_when(self.timestamp,
                                                      f"run {self.run_id} timestamp"))
        ids = [p.candidate_id for p in self.placings]
        if len(set(ids)) != len(ids):
            raise ValueError(f"run {self.run_id} lists a candidate twice")
        if self.winner_id is not None and self.winner_id not in ids:
            raise ValueError(f"run {self.run_id}: winner {self.winner_id!r} is not among "
                             f"its candidates")

    @classmethod
    def from_placings(cls, run_id: str, timestamp: str,
                      placings: Iterable[Placing]) -> SeasonRun:
        """The winner by today's rule: the best-ranked qualified candidate."""
        placings = tuple(placings)
        best = min((p for p in placings if p.qualified), key=lambda p: (p.rank, p.candidate_id),
                   default=None)
        return cls(run_id, timestamp, placings, best.candidate_id if best else None)

    @classmethod
    def from_result(cls, result: ForgeResult) -> SeasonRun:
        names = {c.id: c.name for c in result.candidates}
        placings = tuple(Placing(s.candidate_id, s.rank, float(s.total_score), s.qualified,
                                 names.get(s.candidate_id, ""))
                         for s in result.scores)
        return cls(result.run_id, result.timestamp, placings, result.winner_id)


@dataclass(frozen=True)
class Rating:
    rating: float
    low: float
    high: float

    @property
    def plus_minus(self) -> float:
        """Half the interval's width: the "± 40" of "1612 ± 40"."""
        return (self.high - self.low) / 2.0


@dataclass(frozen=True)
class RegressionCheck:
    """``low``: the lower end of the prediction interval from ``history`` (None: fewer
    than ``min_history`` previous runs, so no verdict)."""

    current: float
    history: tuple[float, ...]
    low: float | None
    flagged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"current": self.current, "history": list(self.history), "low": self.low,
                "flagged": self.flagged}


@dataclass(frozen=True)
class Standing:
    candidate_id: str
    name: str
    position: int  # 1 = season leader (by rating)
    rating: Rating
    runs: int
    wins: int
    podiums: int  # qualified and ranked in the top three
    streak: int  # consecutive wins up to the season's latest run
    average_score: float
    last_score: float | None  # in the latest run; None when absent from it
    trend: float | None  # points per run over the last trend_window scores
    regression: RegressionCheck | None  # None when absent from the latest run

    @property
    def regressed(self) -> bool:
        return self.regression is not None and self.regression.flagged

    def to_dict(self) -> dict[str, Any]:
        return {"candidate_id": self.candidate_id, "name": self.name,
                "position": self.position, "rating": self.rating.rating,
                "rating_low": self.rating.low, "rating_high": self.rating.high,
                "runs": self.runs, "wins": self.wins, "podiums": self.podiums,
                "streak": self.streak, "average_score": self.average_score,
                "last_score": self.last_score, "trend": self.trend,
                "regressed": self.regressed,
                "regression": self.regression.to_dict() if self.regression else None}


@dataclass(frozen=True)
class Standings:
    runs: int
    latest_run_id: str | None
    first_timestamp: str | None
    last_timestamp: str | None
    confidence: float
    table: tuple[Standing, ...] = field(default_factory=tuple)

    @property
    def leader(self) -> Standing | None:
        return self.table[0] if self.table else None

    def get(self, candidate_id: str) -> Standing | None:
        return next((s for s in self.table if s.candidate_id == candidate_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "latest_run_id": self.latest_run_id,
                "first_timestamp": self.first_timestamp,
                "last_timestamp": self.last_timestamp, "confidence": self.confidence,
                "standings": [s.to_dict() for s in self.table]}


# ------------------------------------------------------------------- Bradley-Terry

@dataclass
class _Season:
    """Runs as arrays: wins per run and candidate, and runs grouped by who took part
    (every pair in a group meets once per run, so a group and its run count give every
    pair's number of games)."""

    ids: list[str]
    run_wins: list[list[float]]  # [run][candidate]: pairwise wins (0 when absent)
    run_group: list[int]  # run -> index into groups
    groups: list[list[int]]  # member candidate indices of each participation group


def _wins(placings: Sequence[Placing]) -> list[float]:
    """Pairwise wins of each placing in its run: better-ranked wins, equal ranks halve."""
    ranks = sorted(p.rank for p in placings)
    out = []
    for p in placings:
        worse = len(ranks) - bisect_right(ranks, p.rank)
        equal = bisect_right(ranks, p.rank) - bisect_left(ranks, p.rank) - 1
        out.append(worse + 0.5 * equal)
    return out


def _season(runs: Sequence[SeasonRun]) -> _Season:
    ids = sorted({p.candidate_id for r in runs for p in r.placings})
    index = {cid: i for i, cid in enumerate(ids)}
    run_wins = [[0.0] * len(ids) for _ in runs]
    group_of: dict[tuple[int, ...], int] = {}
    groups: list[list[int]] = []
    run_group = []
    for k, run in enumerate(runs):
        members = [index[p.candidate_id] for p in run.placings]
        for i, w in zip(members, _wins(run.placings), strict=True):
            run_wins[k][i] = w
        key = tuple(sorted(members))
        if key not in group_of:
            group_of[key] = len(groups)
            groups.append(list(key))
        run_group.append(group_of[key])
    return _Season(ids, run_wins, run_group, groups)


def _with_prior(n: int, groups: list[list[int]], weights: list[float],
                ) -> list[tuple[list[int], float]]:
    """Games per participation group, plus the prior's group of everyone."""
    everyone = list(range(n))
    out = [(g, w) for g, w in zip(groups, weights, strict=True) if w > 0 and g != everyone]
    out.append((everyone, PRIOR_GAMES + sum(w for g, w in zip(groups, weights, strict=True)
                                            if g == everyone)))
    return out


Games = list[tuple[list[int], float]]  # (members of a participation group, games per pair)


def _group_moments(strength: list[float], members: list[int],
                   ) -> tuple[list[float], list[float]]:
    """Per member, over one game against every other member: expected wins (the sum of
    x = P(i beats j) = 1 / (1 + p_j / p_i)) and curvature (the sum of x (1 - x), the
    Hessian's diagonal); the member itself (x = 1/2) taken out."""
    ps = [strength[j] for j in members]
    wins, curvature = [], []
    for ri in [1.0 / p for p in ps]:
        xs = [1.0 / (1.0 + pj * ri) for pj in ps]
        total = sum(xs)
        wins.append(total - 0.5)
        curvature.append(total - sum(map(mul, xs, xs)) - 0.25)
    return wins, curvature


def _moments(theta: list[float], games: Games) -> tuple[list[float], list[float]]:
    """Expected wins and curvature of every candidate under ``theta`` (log-strengths)."""
    strength = [math.exp(t) for t in theta]
    if len(games) == 1:  # everyone met in every run: the usual season
        members, weight = games[0]
        wins, curvature = _group_moments(strength, members)
        return [weight * w for w in wins], [weight * c for c in curvature]
    n = len(theta)
    wins, curvature = [0.0] * n, [0.0] * n
    for members, weight in games:
        for i, w, c in zip(members, *_group_moments(strength, members), strict=True):
            wins[i] += weight * w
            curvature[i] += weight * c
    return wins, curvature


def _log_likelihood(theta: list[float], wins: list[float], games: Games) -> float:
    strength = [math.exp(t) for t in theta]
    total = math.fsum(map(mul, wins, theta))
    for members, weight in games:
        ps = [strength[j] for j in members]
        for a, pi in enumerate(ps):
            total -= weight * math.fsum([math.log(pi + pj) for pj in ps[a + 1:]])
    return total


def _hessian(theta: list[float], games: Games) -> list[list[float]]:
    """Negative Hessian of the log-likelihood (a weighted graph Laplacian) plus a constant
    in every entry, which pins the free direction and leaves the rest unchanged (the
    gradient always sums to zero: total wins equal total games)."""
    n = len(theta)
    strength = [math.exp(t) for t in theta]
    h = [[0.0] * n for _ in range(n)]
    for members, weight in games:
        ps = [strength[j] for j in members]
        for i, pi in zip(members, ps, strict=True):
            row = h[i]
            for j, pj in zip(members, ps, strict=True):
                row[j] -= weight * pi * pj / (pi + pj) ** 2
    for i, row in enumerate(h):
        row[i] = 0.0
        row[i] = -math.fsum(row)
    pin = max(row[i] for i, row in enumerate(h)) or 1.0
    return [[x + pin for x in row] for row in h]


def _cholesky(a: list[list[float]]) -> tuple[list[list[float]], list[list[float]]]:
    """Rows of L (row i holds columns 0..i) and of L^T (row i holds columns i..n-1) for a
    symmetric positive definite matrix."""
    n = len(a)
    lower: list[list[float]] = []
    for i in range(n):
        li: list[float] = []
        ai = a[i]
        for j in range(i):
            lj = lower[j]
            li.append((ai[j] - sum(map(mul, li, lj))) / lj[j])
        li.append(math.sqrt(max(ai[i] - sum(map(mul, li, li)), 1e-300)))
        lower.append(li)
    upper = [[lower[k][i] for k in range(i, n)] for i in range(n)]
    return lower, upper


def _solve(factor: tuple[list[list[float]], list[list[float]]], b: list[float]) -> list[float]:
    """Solve L L^T x = b by forward then back substitution."""
    lower, upper = factor
    n = len(b)
    y: list[float] = []
    for i in range(n):
        li = lower[i]
        y.append((b[i] - sum(map(mul, li, y))) / li[i])
    x = [0.0] * n
    for i in range(n - 1, -1, -1):
        ui = upper[i]
        x[i] = (y[i] - sum(map(mul, ui[1:], x[i + 1:]))) / ui[0]
    return x


def _inverse(factor: tuple[list[list[float]], list[list[float]]]) -> list[list[float]]:
    n = len(factor[0])
    cols = [_solve(factor, [1.0 if k == i else 0.0 for k in range(n)]) for i in range(n)]
    return [list(row) for row in zip(*cols, strict=True)]


def _matvec(matrix: list[list[float]], vector: list[float]) -> list[float]:
    return [sum(map(mul, row, vector)) for row in matrix]


def _centred(theta: list[float]) -> list[float]:
    m = math.fsum(theta) / len(theta)
    return [t - m for t in theta]


def _start(wins: list[float], games: Games, n: int) -> list[float]:
    """Log-odds of each candidate's share of wins: close to the fit, so Newton starts near."""
    played = [0.0] * n
    for members, weight in games:
        for i in members:
            played[i] += weight * (len(members) - 1)
    return _centred([math.log(w / (p - w)) for w, p in zip(wins, played, strict=True)])


def _newton(wins: list[float], games: Games, theta: list[float],
            tol: float = 1e-10, max_steps: int = 100) -> list[float]:
    """Maximum-likelihood log-strengths (mean zero), by Newton with step halving."""
    current = _log_likelihood(theta, wins, games)
    for _ in range(max_steps):
        grad = list(map(sub, wins, _moments(theta, games)[0]))
        step = _solve(_cholesky(_hessian(theta, games)), grad)
        size = max(map(abs, step))
        if size < tol:
            break
        scale = 1.0
        while True:
            trial = _centred([t + scale * d for t, d in zip(theta, step, strict=True)])
            value = _log_likelihood(trial, wins, games)
            if value >= current - 1e-12 * abs(current) or scale < 1e-6:
                break
            scale /= 2.0
        theta, current = trial, value
        if size * scale < tol:
            break
    return theta


def _refit(wins: list[float], games: Games, theta0: list[float], step: list[float],
           inverse: list[list[float]], curvature0: list[float], max_steps: int = 25,
           ) -> list[float]:
    """A resample's fit from the full fit ``theta0`` (first ``step`` given), by a chord
    method: the full fit's inverse Hessian, each step rescaled by how far each
    candidate's curvature moved from ``curvature0`` (a diagonal correction; it halves
    the passes when strengths are far apart). The steps shrink geometrically, so it
    stops once the next is predicted below ``REFIT_TOL``; Newton takes over if they do
    not shrink."""
    theta, last = theta0, math.inf
    for _ in range(max_steps):
        size = max(map(abs, step))
        if size >= last:
            return _newton(wins, games, theta0)
        theta = list(map(add, theta, step))
        if size < REFIT_TOL or (last < math.inf and size * size / last < REFIT_TOL):
            return _centred(theta)
        last = size
        expected, curvature = _moments(theta, games)
        scale = [math.sqrt(c0 / max(c, 1e-300))
                 for c0, c in zip(curvature0, curvature, strict=True)]
        grad = [(w - e) * k for w, e, k in zip(wins, expected, scale, strict=True)]
        step = [x * k for x, k in zip(_matvec(inverse, grad), scale, strict=True)]
    return _newton(wins, games, theta0)


def _seed(runs: Sequence[SeasonRun]) -> int:
    text = json.dumps([[r.run_id, sorted((p.candidate_id, p.rank) for p in r.placings)]
                       for r in runs], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _to_rating(theta: float) -> float:
    return BASE_RATING + RATING_PER_NAT * theta


def ratings(runs: Sequence[SeasonRun], *, resamples: int = RESAMPLES,
            confidence: float = CONFIDENCE) -> dict[str, Rating]:
    """Bradley-Terry ratings with percentile-bootstrap intervals over ``runs``
    (``resamples=0``: points only, intervals collapse to them)."""
    check_confidence(confidence)
    runs = _ordered(runs)
    if not runs:
        return {}
    season = _season(runs)
    n, count = len(season.ids), len(runs)
    if n == 1:
        return {season.ids[0]: Rating(BASE_RATING, BASE_RATING, BASE_RATING)}
    prior_wins = PRIOR_GAMES * 0.5 * (n - 1)

    def fit_inputs(drawn: list[int]) -> tuple[list[float], list[float], Games]:
        """Wins, games per participation group, and games with the prior, of the runs
        ``drawn`` (indices, repeats allowed)."""
        wins = [prior_wins + w for w in map(sum, zip(*[season.run_wins[k] for k in drawn],
                                                     strict=True))]
        weights = [0.0] * len(season.groups)
        for k in drawn:
            weights[season.run_group[k]] += 1.0
        return wins, weights, _with_prior(n, season.groups, weights)

    wins, _, games = fit_inputs(list(range(count)))
    theta = _newton(wins, games, _start(wins, games, n))
    samples: list[list[float]] = [[] for _ in range(n)]  # sorted, per candidate
    if resamples > 0 and count > 1:
        inverse = _inverse(_cholesky(_hessian(theta, games)))
        # A resample's first step, inverse Hessian times (its wins - its expected wins at
        # the full fit), is linear in how often each run was drawn: one vector per run,
        # computed once, and a sum of the drawn ones per resample.
        strength = [math.exp(t) for t in theta]
        expected = []
        for group in season.groups:
            dense = [0.0] * n
            for i, e in zip(group, _group_moments(strength, group)[0], strict=True):
                dense[i] = e
            expected.append(dense)
        everyone = _group_moments(strength, list(range(n)))[0]
        curvature0 = _moments(theta, games)[1]
        per_run = [_matvec(inverse, list(map(sub, season.run_wins[k],
                                             expected[season.run_group[k]])))
                   for k in range(count)]
        base = _matvec(inverse, [prior_wins - PRIOR_GAMES * e for e in everyone])
        rng = random.Random(_seed(runs))
        fits = []
        for _ in range(resamples):
            drawn = rng.choices(range(count), k=count)
            b_wins, _, b_games = fit_inputs(drawn)
            step = list(map(add, base, map(sum, zip(*[per_run[k] for k in drawn],
                                                     strict=True))))
            fits.append(_refit(b_wins, b_games, theta, step, inverse, curvature0))
        samples = [sorted(column) for column in zip(*fits, strict=True)]
    out = {}
    tail = (1.0 - confidence) / 2.0
    for i, cid in enumerate(season.ids):
        point = _to_rating(theta[i])
        if samples[i]:
            low = _to_rating(percentile(samples[i], tail))
            high = _to_rating(percentile(samples[i], 1.0 - tail))
        else:
            low = high = point
        out[cid] = Rating(point, low, high)
    return out


# ----------------------------------------------------------------------- standings

def check_regression(history: Sequence[float], current: float, *,
                     window: int = REGRESSION_WINDOW, min_history: int = MIN_HISTORY,
                     confidence: float = CONFIDENCE, min_drop: float = MIN_DROP,
                     ) -> RegressionCheck:
    """Did ``current`` fall below the prediction interval of the last ``window`` scores
    of ``history`` (oldest first)? See the module docstring."""
    if window < 2 or min_history < 2:
        raise ValueError("a regression check needs a window and history of at least 2 runs")
    recent = tuple(float(x) for x in history[-window:])
    interval = prediction_interval(recent, confidence) if len(recent) >= min_history else None
    low = interval[0] if interval else None
    flagged = (low is not None and current < low
               and mean(recent) - current >= min_drop)
    return RegressionCheck(float(current), recent, low, flagged)


def _since(value: date | datetime | str) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return _parse_when(value, "since")


def _ordered(runs: Iterable[SeasonRun], since: date | datetime | str | None = None,
             ) -> list[SeasonRun]:
    ordered = sorted(runs, key=lambda r: (r.when, r.run_id))
    seen: set[str] = set()
    for r in ordered:
        if r.run_id in seen:
            raise ValueError(f"run {r.run_id} appears twice in the season")
        seen.add(r.run_id)
    if since is not None:
        start = _since(since)
        ordered = [r for r in ordered if r.when >= start]
    return ordered


def standings(runs: Iterable[SeasonRun], *, since: date | datetime | str | None = None,
              resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
              regression_window: int = REGRESSION_WINDOW, min_history: int = MIN_HISTORY,
              min_drop: float = MIN_DROP, trend_window: int = TREND_WINDOW) -> Standings:
    """The season table over ``runs`` (any order; those before ``since`` left out),
    leader first: by rating, then wins, then average score, then id."""
    check_confidence(confidence)
    if min(regression_window, min_history, trend_window) < 2:
        raise ValueError("regression_window, min_history and trend_window must be at least 2")
    runs = _ordered(runs, since)
    if not runs:
        return Standings(0, None, None, None, confidence)
    rated = ratings(runs, resamples=resamples, confidence=confidence)
    latest = runs[-1]
    scores: dict[str, list[float]] = {}
    wins: dict[str, int] = {}
    podiums: dict[str, int] = {}
    names: dict[str, str] = {}
    for run in runs:
        for p in run.placings:
            scores.setdefault(p.candidate_id, []).append(float(p.total_score))
            names[p.candidate_id] = p.name or names.get(p.candidate_id) or p.candidate_id
            if p.qualified and p.rank <= 3:
                podiums[p.candidate_id] = podiums.get(p.candidate_id, 0) + 1
        if run.winner_id is not None:
            wins[run.winner_id] = wins.get(run.winner_id, 0) + 1
    in_latest = {p.candidate_id: float(p.total_score) for p in latest.placings}
    rows = []
    for cid, history in scores.items():
        streak = 0
        for run in reversed(runs):
            if run.winner_id != cid:
                break
            streak += 1
        recent = history[-trend_window:]
        regression = None
        if cid in in_latest:
            regression = check_regression(history[:-1], history[-1], window=regression_window,
                                          min_history=min_history, confidence=confidence,
                                          min_drop=min_drop)
        rows.append(Standing(
            candidate_id=cid, name=names[cid], position=0, rating=rated[cid],
            runs=len(history), wins=wins.get(cid, 0), podiums=podiums.get(cid, 0),
            streak=streak, average_score=mean(history), last_score=in_latest.get(cid),
            trend=slope(recent) if len(recent) >= 3 else None, regression=regression))
    rows.sort(key=lambda s: (-round(s.rating.rating, 9), -s.wins,
                             -round(s.average_score, 9), s.candidate_id))
    table = tuple(replace(s, position=i) for i, s in enumerate(rows, 1))
    return Standings(len(runs), latest.run_id, runs[0].timestamp, latest.timestamp,
                     confidence, table)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def season_line(table: Standings, winner_id: str | None) -> str | None:
    """One line of season context for the winner's post, e.g.
    "3rd win in a row · season leader Agent Beta, 1612 ± 40". None when the winner is
    not in the standings (or there is no winner)."""
    me = table.get(winner_id) if winner_id else None
    leader = table.leader
    if me is None or leader is None:
        return None
    if me.streak >= 2:
        first = f"{ordinal(me.streak)} win in a row"
    elif me.wins:
        first = f"{ordinal(me.wins)} win this season"
    else:
        first = f"{ordinal(me.runs)} run this season"
    who = "" if leader is me else f" {leader.name}"
    return (f"{first} · season leader{who}, "
            f"{leader.rating.rating:.0f} ± {leader.rating.plus_minus:.0f}")
