"""``report.html``: one self-contained page (inline CSS, no scripts, no fetches).

The stylesheet ships beside this module as package data (``report.css``) and is inlined
into every page, so a report opens anywhere, offline, under a CSP that forbids fetches.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from importlib import resources
from typing import Any

from worker.records import ForgeResult, Score
from worker.report import verdict
from worker.report.post import markdown_to_html
from worker.report.rows import (
    NO_WINNER,
    Row,
    ranked_rows,
    row_facts,
    speed_words,
    winner_post,
    winner_row,
)
from worker.report.text import (
    TAIL_LINES,
    artifact_shown,
    compact,
    cpu,
    cut_line,
    esc,
    fmt,
    is_scalar,
    num,
    output_tail,
    runtime,
)
from worker.validation import shorten


@functools.cache
def stylesheet() -> str:
    """The report's CSS (``report.css``, package data), read once per process."""
    return resources.files("worker.report").joinpath("report.css").read_text(encoding="utf-8")


def _badge(passed: bool) -> str:
    return '<span class="badge pass">PASS</span>' if passed else \
        '<span class="badge fail">FAIL</span>'


def _gates_html(score: Score | None) -> str:
    if not score or not score.gates:
        return '<span class="muted">—</span>'
    return "".join(
        f'<span class="gate {"ok" if ok else "no"}">{"✓" if ok else "✗"} {esc(name)}</span>'
        for name, ok in score.gates.items()
    )


def _bar(value: Any) -> str:
    f = num(value)
    width = 0.0 if f is None else max(0.0, min(100.0, f))
    return f'<div class="bar"><i style="width:{width:.1f}%"></i></div>'


def _check_html(name: str, check: dict[str, Any]) -> str:
    ok = check.get("valid")
    score = f" · {fmt(check['score'], 0)}" if num(check.get("score")) is not None else ""
    details = check.get("details")
    note = f' <span class="muted">{esc(cut_line(str(details)))}</span>' if details else ""
    return (f'<div class="chk"><span class="gate {"ok" if ok else "no"}">'
            f'{"✓" if ok else "✗"} {esc(name)}{score}</span>{note}</div>')


def _value_html(value: Any, depth: int = 0) -> str:
    """Any JSON-ish value as HTML (the judge's details have no fixed shape)."""
    if isinstance(value, bool):
        return '<span class="gate ok">✓</span>' if value else '<span class="gate no">✗</span>'
    if is_scalar(value):
        return "—" if value is None else esc(cut_line(str(value)))
    if depth >= 3:
        return f'<code>{esc(compact(value))}</code>'
    if isinstance(value, dict):
        if not value:
            return "—"
        if all(isinstance(v, bool) for v in value.values()):  # flags: inline chips
            return "".join(f'<span class="gate {"ok" if v else "no"}">{"✓" if v else "✗"} '
                           f"{esc(k)}</span>" for k, v in value.items())
        if all(isinstance(v, dict) and isinstance(v.get("valid"), bool)
               for v in value.values()):  # named checks {valid, score?, details?}
            return "".join(_check_html(k, v) for k, v in value.items())
        return '<dl class="kv">' + "".join(
            f"<dt>{esc(k)}</dt><dd>{_value_html(v, depth + 1)}</dd>"
            for k, v in list(value.items())[:40]) + "</dl>"
    if isinstance(value, list | tuple):
        if not value:
            return "—"
        if all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))[:10]
            head = "".join(f"<th>{esc(c)}</th>" for c in cols)
            body = "".join(
                "<tr>" + "".join(f"<td>{_value_html(v.get(c), depth + 1)}</td>" for c in cols)
                + "</tr>" for v in value[:100])
            more = (f'<p class="muted">… {len(value) - 100} more</p>'
                    if len(value) > 100 else "")
            return f'<table class="qd"><tr>{head}</tr>{body}</table>{more}'
        if all(is_scalar(v) for v in value):
            return ", ".join(_value_html(v, depth + 1) for v in value[:100])
        return "<ul>" + "".join(f"<li>{_value_html(v, depth + 1)}</li>"
                                for v in value[:100]) + "</ul>"
    return f"<code>{esc(compact(value))}</code>"


def _metric(label: str, value: Any) -> str:
    return (f'<div class="metric"><div class="k">{label}</div>'
            f'<div class="v">{fmt(value)}</div>{_bar(value)}</div>')


def _winner_html(result: ForgeResult, win: Row | None) -> str:
    if not win or not win.score:
        return f'<div class="card nowinner">{NO_WINNER}.</div>'
    s = win.score
    desc = f'<div class="desc">{esc(win.description)}</div>' if win.description else ""
    post = winner_post(result)
    post_html = (
        f'<p class="posthead">The winning post, as it would read on Discord '
        f'(<span class="mono">{esc(win.cid)}/discord_post.md</span>)</p>'
        f'<div class="post">{markdown_to_html(artifact_shown(post))}</div>'
        if post is not None else '<p class="muted">The winner left no post.</p>'
    )
    return (
        '<div class="card winner"><div class="head"><div>'
        '<div class="label">🏆 Winner</div>'
        f'<h3>{esc(win.name)}</h3>{desc}'
        f'<div class="muted mono">{esc(win.cid)} · runtime {runtime(win.result)}</div></div>'
        f'<div class="big">{fmt(s.total_score)}<small>/100</small></div></div>'
        '<div class="breakdown">'
        + _metric("Success", s.success) + _metric("Quality", s.quality_score)
        + _metric("Speed", s.speed_score) + _metric("Total", s.total_score)
        + f"</div>{post_html}</div>"
    )


def _board_html(rows: Iterable[Row], winner_id: str | None) -> str:
    head = ("<tr><th>#</th><th>Candidate</th><th>Result</th><th>Gates</th>"
            '<th class="n">Success</th><th class="n">Quality</th><th class="n">Speed</th>'
            '<th class="n">Total</th><th class="n">Runtime</th><th class="n">CPU</th>'
            '<th>Disqualified because</th></tr>')
    body = []
    for row in rows:
        s = row.score
        desc = f'<span class="d">{esc(row.description)}</span>' if row.description else ""
        body.append(
            f'<tr class="{"win" if row.cid == winner_id else ""}">'
            f'<td class="rank">{s.rank if s and s.rank else "—"}</td>'
            f'<td class="cand"><b>{esc(row.name)}</b>'
            f'<span class="id mono">{esc(row.cid)}</span> {desc}</td>'
            f"<td>{_badge(row.passed)}</td><td>{_gates_html(s)}</td>"
            f'<td class="n">{fmt(s.success if s else None)}</td>'
            f'<td class="n">{fmt(s.quality_score if s else None)}</td>'
            f'<td class="n">{fmt(s.speed_score if s else None)}</td>'
            f'<td class="n total">{fmt(s.total_score if s else None)}</td>'
            f'<td class="n">{runtime(row.result)}</td><td class="n">{cpu(row.result)}</td>'
            f'<td class="reason">{esc(cut_line(row.reason))}</td></tr>'
        )
    return f'<div class="card"><table class="board">{head}{"".join(body)}</table></div>'


def _candidate_html(row: Row, is_winner: bool) -> str:
    s, r = row.score, row.result
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(cut_line(v))}</dd>"
                    for k, v in row_facts(row))
    parts = [f'<dl class="facts">{facts}</dl>']
    if s and s.quality_details:
        parts.append(f"<h4>Quality details</h4>{_value_html(s.quality_details)}")
    if r and r.artifact_content is not None:
        parts.append(f'<h4>Artifact · <span class="mono">{esc(row.cid)}/discord_post.md</span>'
                     f'</h4><pre class="raw">{esc(artifact_shown(r.artifact_content))}</pre>')
    else:
        parts.append('<h4>Artifact</h4><p class="muted">None.</p>')
    if r and r.output:
        parts.append(f"<h4>Output · last {TAIL_LINES} lines</h4>"
                     f'<pre class="term">{esc(output_tail(r.output))}</pre>')
    rank = f"#{s.rank}" if s and s.rank else "—"
    return (
        f'<details class="card cand-d"{" open" if is_winner else ""}><summary>'
        f'<span class="muted">{rank}</span><span class="nm">{esc(row.name)}</span>'
        f'<span class="muted mono">{esc(row.cid)}</span>{_badge(row.passed)}'
        f'<span class="sc">{fmt(s.total_score if s else None)}</span></summary>'
        f'<div class="body">{"".join(parts)}</div></details>'
    )


def render_html(result: ForgeResult) -> str:
    """``report.html``: one self-contained page (inline CSS, no scripts, no fetches)."""
    return "".join(html_parts(result))


def html_parts(result: ForgeResult) -> Iterator[str]:
    """``report.html`` as pieces to write one after another (no whole copy in memory)."""
    rows = ranked_rows(result)
    win = winner_row(result, rows)
    meta = [("Run", f'<span class="mono">{esc(result.run_id)}</span>'),
            ("Timestamp", esc(result.timestamp)), ("Mode", esc(result.execution_mode)),
            ("Judge", esc(result.judge)), ("Speed scored on", esc(speed_words(result))),
            ("Candidates", str(len(rows)))]
    if result.competition:
        meta.append(("Competition", esc(result.competition)))
    passed = sum(1 for r in rows if r.passed)
    meta.append(("Passed", f"{passed}/{len(rows)}"))
    notes = "".join(f"<div>{esc(n)}</div>" for n in result.notes)
    footer = f"Dream Foundry · run {esc(result.run_id)}"
    if result.definition_sha256:
        footer += f' · definition <span class="mono">{esc(result.definition_sha256[:12])}</span>'
    head = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">"
        f"<title>Dream Foundry · {esc(result.run_id)}</title>"
        f"<style>\n{stylesheet()}</style></head>\n<body><main>"
        '<header class="top"><div class="kicker">Dream Foundry · run report</div>'
        f"<h1>{esc(shorten(result.objective))}</h1><ul class=\"meta\">"
        + "".join(f"<li>{k} <b>{v}</b></li>" for k, v in meta)
        + "</ul>"
        + (f'<div class="notes">{notes}</div>' if notes else "")
        + "</header>\n"
        f"<section><h2>Winner</h2>{verdict.winner_html(result)}"
        f"{_winner_html(result, win)}</section>\n"
        + verdict.trials_html(result)
        + f"<section><h2>Leaderboard</h2>{_board_html(rows, result.winner_id)}</section>\n"
        + verdict.standings_html(result)
        + "<section><h2>Candidates</h2>"
    )
    yield head
    for n, row in enumerate(rows):
        yield ("\n" if n else "") + _candidate_html(row, win is not None and row is win)
    yield f"</section>\n<footer>{footer}</footer></main></body></html>\n"
