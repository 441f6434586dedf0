"""The report's sections for repeated trials and the season: the verdict (a winner with
its mean and 95% interval, or "statistically tied"), the trials table (mean, interval,
every trial's score, pass rate, pass^K, flaky) and the season standings after the run
(ratings, wins, streaks, regressions flagged).

Pure functions of the ForgeResult like the rest of the report (the run directory is
written idempotently). Every value that came from a manifest or a candidate is escaped
by the report's own helpers. Nothing here is shown for a one-trial run outside a
competition: such a report is exactly what it was.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from worker.records import ForgeResult
from worker.report.text import esc, fmt, md_cell

_HELPERS = SimpleNamespace(_md_cell=md_cell, _fmt=fmt, _e=esc)
FLAKY_BADGE = '<span class="badge fail">FLAKY</span>'


def _h():
    """The report's text helpers (worker/report/text.py)."""
    return _HELPERS


def _names(result: ForgeResult) -> dict[str, str]:
    return {c.id: c.name or c.id for c in result.candidates}


def _ci(s: dict[str, Any]) -> str:
    f = _h()._fmt
    return f"{f(s.get('ci_low'))}–{f(s.get('ci_high'))}"


# ------------------------------------------------------------------------ markdown


def winner_md(result: ForgeResult) -> list[str]:
    """The Winner section's lines for repeated trials ([] for one trial)."""
    if result.trials <= 1 or not result.winner_id:
        return []
    r = _h()
    names = _names(result)
    me = result.summary_for(result.winner_id) or {}
    verdict = result.verdict or {}
    who = f"**{r._md_cell(names.get(result.winner_id, result.winner_id))}** " \
          f"(`{r._md_cell(result.winner_id)}`)"
    mean = (f"a mean of **{r._fmt(me.get('mean'))}/100** over {me.get('trials')} trials "
            f"(95% CI {_ci(me)})")
    if result.tied:
        tied = ", ".join(f"**{r._md_cell(names.get(c, c))}**"
                         for c in verdict.get("contenders") or ())
        return [f"🤝 **Statistically tied:** {tied}: no outright winner (the 95% interval of "
                "the difference of their means includes zero).", "",
                f"The post goes to {who}, {mean}: {r._md_cell(verdict.get('reason'), 500)}."]
    return [f"🏆 {who} wins with {mean}.", "",
            f"*Verdict:* {r._md_cell(verdict.get('reason'), 500)}."]


def trials_md(result: ForgeResult) -> list[str]:
    if result.trials <= 1:
        return []
    r = _h()
    names = _names(result)
    k = result.trials
    lines = ["", "## Trials", "",
             f"Each candidate ran {k} times, each trial in a fresh sandbox; ranked by mean "
             "with a Student-t 95% interval (docs/trials.md).", "",
             f"| Rank | Candidate | Mean | 95% CI | Trial scores | Pass rate | pass^{k} "
             "| Flaky |", "|---:|---|---:|---|---|---:|:---:|:---:|"]
    contenders = set((result.verdict or {}).get("contenders") or ())
    for s in result.trial_summaries:
        cid = s["candidate_id"]
        tie = " (tied)" if result.tied and cid in contenders else ""
        lines.append(
            f"| {s['rank']} | **{r._md_cell(names.get(cid, cid))}** (`{r._md_cell(cid)}`)"
            f"{tie} | **{r._fmt(s['mean'])}** | {_ci(s)} "
            f"| {' '.join(r._fmt(x) for x in s['scores'])} | {s['passes']}/{s['trials']} "
            f"| {'yes' if s['pass_all'] else 'no'} | {'FLAKY' if s['flaky'] else ''} |")
    return lines


def _regression_text(s: dict[str, Any]) -> str:
    f = _h()._fmt
    reg = s.get("regression") or {}
    return (f"REGRESSED: {f(s.get('last_score'))} below {f(reg.get('low'))}, the low end "
            f"of its last {len(reg.get('history') or [])} runs' 95% prediction interval")


def standings_md(result: ForgeResult) -> list[str]:
    st = result.standings
    if not st or not st.get("standings"):
        return []
    r = _h()
    lines = ["", "## Season standings", "",
             f"{r._md_cell(st.get('competition'))} after this run: {st['runs']} run(s). "
             "Bradley-Terry ratings with 95% bootstrap intervals."]
    if st.get("season_line"):
        lines += ["", f"*{r._md_cell(st['season_line'])}*"]
    lines += ["", "| # | Candidate | Rating | 95% interval | Runs | Wins | Podiums | Streak "
                  "| Average | Last | Trend/run | Regression |",
              "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in st["standings"]:
        trend = "—" if s.get("trend") is None else f"{s['trend']:+.2f}"
        lines.append(
            f"| {s['position']} | **{r._md_cell(s['name'])}** (`{r._md_cell(s['candidate_id'])}`)"
            f" | {s['rating']:.0f} | {s['rating_low']:.0f}–{s['rating_high']:.0f} "
            f"| {s['runs']} | {s['wins']} | {s['podiums']} | {s['streak'] or '—'} "
            f"| {r._fmt(s['average_score'])} | {r._fmt(s.get('last_score'))} | {trend} "
            f"| {_regression_text(s) if s.get('regressed') else ''} |")
    flagged = [s for s in st["standings"] if s.get("regressed")]
    if flagged:
        lines += ["", "**Regressions:** " + "; ".join(
            f"{r._md_cell(s['name'])}: {_regression_text(s)}" for s in flagged) + "."]
    return lines


# ------------------------------------------------------------------------ html


def winner_html(result: ForgeResult) -> str:
    """A verdict line above the winner card for repeated trials ("" for one trial)."""
    if result.trials <= 1 or not result.winner_id:
        return ""
    r = _h()
    names = _names(result)
    me = result.summary_for(result.winner_id) or {}
    verdict = result.verdict or {}
    mean = (f"mean {r._fmt(me.get('mean'))}/100 over {me.get('trials')} trials "
            f"(95% CI {_ci(me)})")
    if result.tied:
        tied = ", ".join(r._e(names.get(c, c)) for c in verdict.get("contenders") or ())
        return (f'<div class="card tied"><b>🤝 Statistically tied:</b> {tied}: no outright '
                "winner (the 95% interval of the difference of their means includes zero). "
                f"The post goes to <b>{r._e(names.get(result.winner_id))}</b>, {mean}: "
                f"{r._e(verdict.get('reason'))}.</div>")
    return (f'<p class="verdict">{r._e(names.get(result.winner_id))} wins with a {mean}. '
            f"<i>{r._e(verdict.get('reason'))}.</i></p>")


def trials_html(result: ForgeResult) -> str:
    if result.trials <= 1:
        return ""
    r = _h()
    names = _names(result)
    k = result.trials
    contenders = set((result.verdict or {}).get("contenders") or ())
    head = ('<tr><th>#</th><th>Candidate</th><th class="n">Mean</th><th>95% CI</th>'
            f'<th>Trial scores</th><th class="n">Pass rate</th><th>pass^{k}</th>'
            "<th>Flaky</th></tr>")
    body = []
    for s in result.trial_summaries:
        cid = s["candidate_id"]
        tie = ' <span class="badge">tied</span>' if result.tied and cid in contenders else ""
        body.append(
            f'<tr class="{"win" if cid == result.winner_id else ""}">'
            f'<td class="rank">{s["rank"]}</td><td class="cand"><b>{r._e(names.get(cid))}</b>'
            f'<span class="id mono">{r._e(cid)}</span>{tie}</td>'
            f'<td class="n total">{r._fmt(s["mean"])}</td><td>{_ci(s)}</td>'
            f'<td class="mono">{" ".join(r._fmt(x) for x in s["scores"])}</td>'
            f'<td class="n">{s["passes"]}/{s["trials"]}</td>'
            f'<td>{"yes" if s["pass_all"] else "no"}</td>'
            f'<td>{FLAKY_BADGE if s["flaky"] else ""}</td></tr>')
    return (f"<section><h2>Trials</h2><p class=\"muted\">Each candidate ran {k} times, each "
            "trial in a fresh sandbox; ranked by mean with a Student-t 95% interval.</p>"
            f'<div class="card"><table class="board">{head}{"".join(body)}</table></div>'
            "</section>\n")


def standings_html(result: ForgeResult) -> str:
    st = result.standings
    if not st or not st.get("standings"):
        return ""
    r = _h()
    head = ('<tr><th>#</th><th>Candidate</th><th class="n">Rating</th><th>95% interval</th>'
            '<th class="n">Runs</th><th class="n">Wins</th><th class="n">Podiums</th>'
            '<th class="n">Streak</th><th class="n">Average</th><th class="n">Last</th>'
            '<th class="n">Trend/run</th><th>Regression</th></tr>')
    body = []
    for s in st["standings"]:
        trend = "—" if s.get("trend") is None else f"{s['trend']:+.2f}"
        flag = (f'<span class="badge fail">REGRESSED</span> {r._e(_regression_text(s))}'
                if s.get("regressed") else "")
        body.append(
            f'<tr><td class="rank">{s["position"]}</td><td class="cand">'
            f'<b>{r._e(s["name"])}</b><span class="id mono">{r._e(s["candidate_id"])}</span>'
            f'</td><td class="n total">{s["rating"]:.0f}</td>'
            f'<td>{s["rating_low"]:.0f}–{s["rating_high"]:.0f}</td>'
            f'<td class="n">{s["runs"]}</td><td class="n">{s["wins"]}</td>'
            f'<td class="n">{s["podiums"]}</td><td class="n">{s["streak"] or "—"}</td>'
            f'<td class="n">{r._fmt(s["average_score"])}</td>'
            f'<td class="n">{r._fmt(s.get("last_score"))}</td><td class="n">{trend}</td>'
            f"<td>{flag}</td></tr>")
    line = f'<p class="muted"><i>{r._e(st["season_line"])}</i></p>' \
        if st.get("season_line") else ""
    return (f"<section><h2>Season standings</h2><p class=\"muted\">{r._e(st.get('competition'))}"
            f" after this run: {st['runs']} run(s). Bradley-Terry ratings with 95% bootstrap "
            f"intervals.</p>{line}"
            f'<div class="card"><table class="board">{head}{"".join(body)}</table></div>'
            "</section>\n")
