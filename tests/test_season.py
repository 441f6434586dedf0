"""Season standings: Bradley-Terry ratings (exact cases and simulated seasons), bootstrap
intervals, wins/podiums/streaks, trends, regressions and the Discord line."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest

import worker.judge.season as season_mod
from worker.judge.season import (
    Placing,
    SeasonRun,
    check_regression,
    ordinal,
    ratings,
    season_line,
    standings,
)
from worker.records import CandidateInfo, ForgeResult, Score

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday: weekly runs from here


def week(k: int) -> str:
    return (START + timedelta(weeks=k)).isoformat()


def run(k: int, scores: dict[str, float], *, disqualified: tuple[str, ...] = (),
        winner: str | None = "auto", names: dict[str, str] | None = None,
        run_id: str | None = None) -> SeasonRun:
    """A run of week ``k``: ranked like worker.judge.rank (qualified first, by score)."""
    ordered = sorted(scores, key=lambda c: (c in disqualified, -scores[c], c))
    placings = [Placing(c, i, scores[c], c not in disqualified, (names or {}).get(c, ""))
                for i, c in enumerate(ordered, start=1)]
    rid = run_id or f"run-{k:03d}"
    if winner == "auto":
        return SeasonRun.from_placings(rid, week(k), placings)
    return SeasonRun(rid, week(k), tuple(placings), winner)


def simulated_season(mu: dict[str, float], runs: int, sd: float, rng: random.Random,
                     prefix: str = "run") -> list[SeasonRun]:
    out = []
    for k in range(runs):
        scores = {c: rng.gauss(m, sd) for c, m in mu.items()}
        out.append(run(k, scores, run_id=f"{prefix}-{k}"))
    return out


def elo_expect(ri: float, rj: float) -> float:
    return 1.0 / (1.0 + 10 ** ((rj - ri) / 400.0))


def kendall_tau(a: dict[str, float], b: dict[str, float]) -> float:
    concordant = discordant = 0
    for x, y in itertools.combinations(list(a), 2):
        s = (a[x] - a[y]) * (b[x] - b[y])
        concordant += s > 0
        discordant += s < 0
    pairs = len(a) * (len(a) - 1) / 2
    return (concordant - discordant) / pairs


# ------------------------------------------------------------------ exact ratings

def test_two_candidates_match_the_closed_form():
    # A beats B in 3 of 4 runs. With the prior's one drawn game: A has 3.5 of 5 wins,
    # so P(A beats B) = 0.7 and the gap is 400 * log10(0.7 / 0.3), centred on 1500.
    runs = [run(k, {"a": 80, "b": 70} if k < 3 else {"a": 60, "b": 70}) for k in range(4)]
    r = ratings(runs, resamples=0)
    gap = 400 * math.log10(7 / 3)
    assert r["a"].rating == pytest.approx(1500 + gap / 2, abs=1e-6)
    assert r["b"].rating == pytest.approx(1500 - gap / 2, abs=1e-6)
    assert elo_expect(r["a"].rating, r["b"].rating) == pytest.approx(0.7)


def test_ratings_solve_the_likelihood_equations_with_uneven_attendance():
    """Candidates join late and leave early; every rating still satisfies the
    Bradley-Terry equations: observed wins (plus the prior's half game per pair) equal
    the expected wins under the Elo expectation of the fitted ratings."""
    rng = random.Random(4)
    everyone = ["a", "b", "c", "d", "late", "gone"]
    runs, wins = [], dict.fromkeys(everyone, 0.0)
    games: dict[tuple[str, str], float] = {}
    for k in range(14):
        present = [c for c in everyone if not (c == "late" and k < 5)
                   and not (c == "gone" and k > 8)]
        scores = {c: rng.gauss(50 + 5 * everyone.index(c), 10) for c in present}
        runs.append(run(k, scores))
        for x, y in itertools.combinations(present, 2):
            games[(x, y)] = games.get((x, y), 0) + 1
            wins[x if scores[x] > scores[y] else y] += 1
    r = ratings(runs, resamples=0)
    assert sum(v.rating for v in r.values()) / len(r) == pytest.approx(1500)
    for i in everyone:
        expected = 0.0
        for j in everyone:
            if j != i:
                met = games.get((i, j), 0) + games.get((j, i), 0) + 1  # + the prior game
                expected += met * elo_expect(r[i].rating, r[j].rating)
        assert expected == pytest.approx(wins[i] + 0.5 * (len(everyone) - 1), abs=1e-6), i


def test_perfect_record_gets_a_finite_rating():
    runs = [run(k, {"champ": 90, "b": 60, "c": 50}) for k in range(10)]
    r = ratings(runs, resamples=50)
    assert math.isfinite(r["champ"].rating) and r["champ"].rating > r["b"].rating
    # Every resample is the same all-win season: nothing varies, the interval is a point.
    assert r["champ"].low == pytest.approx(r["champ"].rating)


# -------------------------------------------------------------- simulated seasons

def simulate_order(gap: float, sims: int = 200, n: int = 8, runs: int = 26, sd: float = 10.0,
                   seed: int = 11) -> tuple[float, float, float]:
    """(share of seasons with the strongest first, mean Kendall tau against the true
    strengths, share with the best average score first) over seeded simulations."""
    rng = random.Random(seed)
    first = by_average = 0
    taus = []
    for s in range(sims):
        # Random ids: an order by id (or by insertion) cannot pass for an order by rating.
        ids = [f"agent-{rng.getrandbits(40):010x}" for _ in range(n)]
        mu = {c: 50.0 + gap * i for i, c in enumerate(ids)}
        season = simulated_season(mu, runs, sd, rng, prefix=f"s{s}")
        r = ratings(season, resamples=0)
        best = max(mu, key=mu.get)
        first += max(r, key=lambda c: (r[c].rating, c)) == best
        if gap:
            taus.append(kendall_tau({c: r[c].rating for c in r}, mu))
        avg = {c: sum(p.total_score for run_ in season for p in run_.placings
                      if p.candidate_id == c) for c in ids}
        by_average += max(avg, key=avg.get) == best
    return first / sims, (sum(taus) / len(taus) if taus else 0.0), by_average / sims


def test_ratings_recover_the_true_order():
    """200 half-seasons (26 weekly runs) of 8 candidates, true means 8 points apart,
    scores ~ Normal(mean, 10): the strongest is rated first in at least 95% of them."""
    first, tau, by_average = simulate_order(gap=8.0)
    assert first >= 0.95, f"strongest first in {first:.1%}"
    assert tau >= 0.95, f"mean Kendall tau {tau:.3f}"
    # Ranks alone lose little against the scores themselves.
    assert first >= by_average - 0.03


def test_order_check_can_fail():
    """Negative control: with equal strengths "the strongest" is first only by chance
    (about 1 in 8), so the 95% above is not reached by any ordering whatsoever."""
    first, _, _ = simulate_order(gap=0.0, sims=200)
    assert first <= 0.25


# ------------------------------------------------------------- bootstrap intervals

def test_same_season_gives_identical_standings_in_any_order():
    rng = random.Random(8)
    mu = {f"c{i}": 50 + 4 * i for i in range(6)}
    season = simulated_season(mu, 20, 10, rng)
    base = standings(season).to_dict()
    shuffled = season[:]
    random.Random(1).shuffle(shuffled)
    assert standings(shuffled).to_dict() == base
    assert standings(season).to_dict() == base
    assert json.loads(json.dumps(base)) == base
    # ...and the seed follows the data: another ranking in one run changes the numbers.
    changed = season[:-1] + [run(19, {c: 100 - m for c, m in mu.items()}, run_id="run-19")]
    assert standings(changed).to_dict()["standings"] != base["standings"]


SEASON_IN_A_CHILD = """
import json, random, sys
sys.path.insert(0, {root!r})
from tests.test_season import simulated_season
from worker.judge.season import standings
mu = {{f"c{{i}}": 50 + 4 * i for i in range(6)}}
print(json.dumps(standings(simulated_season(mu, 20, 10, random.Random(8))).to_dict()))
"""


@pytest.mark.processes
def test_same_season_gives_identical_standings_in_other_processes():
    """The bootstrap seed comes from the data, not from hash() or global state: processes
    with different hash seeds (as a worker and the CLI would be) print the same table."""
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    mu = {f"c{i}": 50 + 4 * i for i in range(6)}
    here = json.loads(json.dumps(standings(simulated_season(mu, 20, 10,
                                                            random.Random(8))).to_dict()))
    for hash_seed in ("1", "2"):
        child = subprocess.run([sys.executable, "-c", SEASON_IN_A_CHILD.format(root=root)],
                               capture_output=True, text=True, timeout=120,
                               env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"})
        assert child.returncode == 0, child.stderr
        assert json.loads(child.stdout) == here


def test_intervals_contain_the_rating_and_narrow_with_more_runs():
    rng = random.Random(21)
    mu = {f"c{i}": 50 + 3 * i for i in range(10)}
    short = ratings(simulated_season(mu, 13, 10, rng), resamples=200)
    long = ratings(simulated_season(mu, 52, 10, rng), resamples=200)
    for table in (short, long):
        for r in table.values():
            assert r.low <= r.rating <= r.high
            assert r.high > r.low
    width = {name: sorted(r.plus_minus for r in table.values())[5]
             for name, table in (("short", short), ("long", long))}
    # Four times the runs: about half the width (sqrt(4)); allow noise.
    assert 0.35 <= width["long"] / width["short"] <= 0.75, width


def test_bootstrap_refits_match_exact_fits(monkeypatch):
    rng = random.Random(5)
    mu = {f"c{i:02d}": 40 + 2.5 * i for i in range(20)}
    season = simulated_season(mu, 30, 8, rng)
    fast = ratings(season)
    monkeypatch.setattr(season_mod, "REFIT_TOL", 1e-12)
    exact = ratings(season)
    for cid, r in fast.items():
        assert r.rating == exact[cid].rating
        assert r.low == pytest.approx(exact[cid].low, abs=1.0)
        assert r.high == pytest.approx(exact[cid].high, abs=1.0)


def test_one_run_or_one_candidate_has_no_spread():
    one = ratings([run(0, {"a": 80, "b": 70, "c": 60})])
    assert all(r.low == r.rating == r.high for r in one.values())
    assert one["a"].rating > one["b"].rating > one["c"].rating
    alone = ratings([run(k, {"solo": 50}) for k in range(3)])
    assert alone == {"solo": season_mod.Rating(1500.0, 1500.0, 1500.0)}


# ------------------------------------------------- wins, podiums, streaks, trends

def crafted_season() -> list[SeasonRun]:
    names = {"a": "Agent Alpha", "b": "Agent Beta", "c": "Agent Gamma", "d": "Agent Delta"}
    rows = [
        {"a": 90, "b": 80, "c": 70, "d": 60},
        {"a": 70, "b": 85, "c": 75, "d": 60},
        {"a": 72, "b": 88, "c": 70, "d": 65},
        {"a": 60, "b": 86, "c": 80, "d": 50},
        {"a": 74, "b": 90, "c": 65, "d": 20},
    ]
    out = [run(k, row, names=names) for k, row in enumerate(rows)]
    # Week 3: d crashed (disqualified) and c failed a gate too: one qualified podium spot
    # fewer for them, whatever their numbers.
    out[3] = run(3, rows[3], disqualified=("c", "d"), names=names)
    return out


def test_wins_podiums_streak_and_average():
    table = standings(crafted_season())
    a, b, c, d = (table.get(x) for x in "abcd")
    assert (b.wins, b.streak, b.podiums, b.runs) == (4, 4, 5, 5)
    assert (a.wins, a.streak, a.podiums) == (1, 0, 5)
    assert (c.wins, c.podiums) == (0, 4)  # not in week 4: disqualified there
    assert (d.wins, d.podiums) == (0, 0)
    assert b.average_score == pytest.approx((80 + 85 + 88 + 86 + 90) / 5)
    assert b.last_score == 90 and b.name == "Agent Beta"
    assert table.leader is b and b.position == 1
    assert [s.position for s in table.table] == [1, 2, 3, 4]
    assert table.runs == 5 and table.latest_run_id == "run-004"
    assert table.first_timestamp == week(0) and table.last_timestamp == week(4)


def test_the_posts_winner_counts_not_rank_one():
    """A statistically tied run whose post went to rank 2 counts as rank 2's win."""
    runs = [run(0, {"a": 80, "b": 70}), run(1, {"a": 81, "b": 80.5}, winner="b"),
            run(2, {"a": 79, "b": 79.5}), run(3, {"a": 50, "b": 40}, winner=None,
                                                disqualified=("a", "b"))]
    table = standings(runs)
    assert (table.get("a").wins, table.get("b").wins) == (1, 2)
    assert table.get("b").streak == 0  # nobody won the latest run
    assert standings(runs[:3]).get("b").streak == 2


def test_trend_is_points_per_run():
    runs = [run(k, {"up": 60 + 2 * k, "flat": 70.0, "down": 90 - 3 * k}) for k in range(8)]
    table = standings(runs, trend_window=6)
    assert table.get("up").trend == pytest.approx(2.0)
    assert table.get("flat").trend == pytest.approx(0.0)
    assert table.get("down").trend == pytest.approx(-3.0)
    assert standings(runs[:2]).get("up").trend is None


def test_since_keeps_only_later_runs():
    runs = [run(k, {"a": 80 + k, "b": 70}) for k in range(10)]
    cut = START + timedelta(weeks=6)
    for since in (cut.date(), cut, cut.replace(tzinfo=None), cut.date().isoformat(),
                  cut.isoformat()):
        table = standings(runs, since=since)
        assert table.runs == 4, since
        assert table.first_timestamp == week(6)
    assert standings(runs, since=date(2030, 1, 1)).runs == 0
    assert standings(runs, since=date(2030, 1, 1)).leader is None
    with pytest.raises(ValueError, match="since.*ISO 8601"):
        standings(runs, since="last tuesday")


def test_candidate_absent_from_the_latest_run():
    runs = [run(0, {"a": 80, "gone": 90}), run(1, {"a": 80, "gone": 95}), run(2, {"a": 81})]
    gone = standings(runs).get("gone")
    assert gone.last_score is None and gone.regression is None and not gone.regressed
    assert gone.streak == 0 and gone.wins == 2


# --------------------------------------------------------------------- regression

def test_regression_check_on_crafted_histories():
    history = [80, 82, 81, 79, 80]
    assert check_regression(history, 60).flagged
    assert not check_regression(history, 78.5).flagged
    short = check_regression([80, 81], 10)
    assert short.low is None and not short.flagged  # too little history: no verdict
    steady = [80.0] * 6
    assert not check_regression(steady, 79.5).flagged  # under min_drop
    assert check_regression(steady, 70).flagged
    window = check_regression([10, 10, 10] + history, 60, window=5)
    assert window.history == tuple(float(x) for x in history)


def test_regression_flags_a_drop_and_not_noise():
    """Stationary Normal(75, 4) scores: the flag fires on about 2.5% of ordinary runs
    (one side of a 95% prediction interval), and on a drop of five standard deviations
    nearly always."""
    rng = random.Random(9)
    sims = 2000
    false_alarms = caught = 0
    for _ in range(sims):
        history = [rng.gauss(75, 4) for _ in range(8)]
        false_alarms += check_regression(history, rng.gauss(75, 4)).flagged
        caught += check_regression(history, rng.gauss(75 - 20, 4)).flagged
    assert false_alarms / sims <= 0.05, false_alarms / sims
    assert caught / sims >= 0.95, caught / sims


def test_standings_flag_the_regressed_candidate_only():
    rng = random.Random(3)
    runs = [run(k, {"steady": rng.gauss(80, 3), "fading": rng.gauss(78, 3)})
            for k in range(9)]
    runs.append(run(9, {"steady": 80.5, "fading": 55.0}))
    table = standings(runs)
    assert table.get("fading").regressed
    assert not table.get("steady").regressed
    assert table.get("fading").regression.low > 55.0


# ----------------------------------------------------------------- the post's line

@pytest.mark.parametrize(("n", "text"), [
    (1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"),
    (13, "13th"), (21, "21st"), (22, "22nd"), (101, "101st"), (111, "111th"),
])
def test_ordinal(n, text):
    assert ordinal(n) == text


def test_season_line_for_the_leader_and_for_another_winner():
    runs = crafted_season()
    table = standings(runs)
    beta = table.get("b")
    expected = f"4th win in a row · season leader, {beta.rating.rating:.0f} ± " \
               f"{beta.rating.plus_minus:.0f}"
    assert season_line(table, "b") == expected
    # Alpha takes week 5: its first win in a row, its second of the season.
    runs.append(run(5, {"a": 95, "b": 80, "c": 70, "d": 60},
                    names={"a": "Agent Alpha", "b": "Agent Beta"}))
    table = standings(runs)
    line = season_line(table, "a")
    assert re.fullmatch(r"2nd win this season · season leader Agent Beta, \d{4} ± \d+", line)
    assert season_line(table, "nobody") is None and season_line(table, None) is None


# ---------------------------------------------------------------- input records

def test_from_result_reads_a_forge_result():
    result = ForgeResult(
        run_id="r1", objective="o", timestamp="2026-02-01T09:00:00+00:00",
        execution_mode="local",
        candidates=[CandidateInfo("a", "Agent Alpha"), CandidateInfo("b", "Agent Beta")],
        scores=[Score("b", total_score=70.5, qualified=True, rank=1),
                Score("a", total_score=20.0, qualified=False, rank=2)],
        winner_id="b")
    r = SeasonRun.from_result(result)
    assert r.run_id == "r1" and r.winner_id == "b"
    assert r.placings == (Placing("b", 1, 70.5, True, "Agent Beta"),
                          Placing("a", 2, 20.0, False, "Agent Alpha"))


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="not an ISO 8601"):
        SeasonRun("r", "yesterday", (), None)
    with pytest.raises(ValueError, match="not among"):
        SeasonRun("r", week(0), (Placing("a", 1, 1.0, True),), "b")
    with pytest.raises(ValueError, match="twice"):
        SeasonRun("r", week(0), (Placing("a", 1, 1.0, True), Placing("a", 2, 1.0, True)),
                  None)
    with pytest.raises(ValueError, match="appears twice"):
        standings([run(0, {"a": 1}), run(1, {"a": 2}, run_id="run-000")])
    with pytest.raises(ValueError, match="confidence"):
        standings([run(0, {"a": 1})], confidence=95)
    with pytest.raises(ValueError, match="at least 2"):
        standings([run(0, {"a": 1})], regression_window=1)
    assert standings([]).runs == 0 and standings([]).table == ()
