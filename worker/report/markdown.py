"""``report.md``: the same content as the HTML report, readable as plain text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from worker.records import ForgeResult, Score
from worker.report import verdict
from worker.report.rows import (
    NO_WINNER,
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
    fmt,
    is_scalar,
    md_cell,
    output_tail,
    runtime,
)
from worker.validation import shorten

_md_cell = md_cell  # the report's markdown cells (worker/report/text.py)


def _fence(text: str, lang: str = "") -> list[str]:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{lang}", text.rstrip("\n"), fence]


def _gates_md(score: Score | None) -> str:
    if not score or not score.gates:
        return "—"
    return " ".join(f"{'✅' if ok else '❌'} {_md_cell(name, 40)}"
                    for name, ok in score.gates.items())


def _md_value(value: Any, limit: int = 200) -> str:
    """One table cell: flags and named checks as ✅/❌, anything else as compact JSON."""
    if is_scalar(value):
        return _md_cell(value, limit)
    if isinstance(value, dict) and value and all(
            isinstance(v, bool) or (isinstance(v, dict) and isinstance(v.get("valid"), bool))
            for v in value.values()):
        return " ".join(f"{'✅' if (v if isinstance(v, bool) else v['valid']) else '❌'} "
                        f"{_md_cell(k, 40)}" for k, v in value.items())
    return _md_cell(compact(value, limit), limit)


def _details_md(details: Any) -> list[str]:
    """Quality details of unknown shape: scalars as bullets, tables for lists of dicts."""
    if not details:
        return []
    if not isinstance(details, dict):
        return [f"- {_md_cell(compact(details), 500)}"]
    out: list[str] = []
    for key, value in details.items():
        if is_scalar(value):
            out.append(f"- **{_md_cell(key, 60)}:** {_md_cell(value)}")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))[:8]
            out += ["", f"**{_md_cell(key, 60)}**", "",
                    "| " + " | ".join(_md_cell(c, 40) for c in cols) + " |",
                    "|" + "---|" * len(cols)]
            for v in value[:50]:
                cells = [_md_value(v.get(c), 120) for c in cols]
                out.append("| " + " | ".join(cells) + " |")
            if len(value) > 50:
                out.append(f"\n… {len(value) - 50} more")
            out.append("")
        else:
            out.append(f"- **{_md_cell(key, 60)}:** {_md_value(value, 300)}")
    return out


def render_markdown(result: ForgeResult) -> str:
    """``report.md``: the same content as the HTML, readable as plain text."""
    return "".join(markdown_parts(result))


def markdown_parts(result: ForgeResult) -> Iterator[str]:
    """``report.md`` as pieces to write one after another (no whole copy in memory)."""
    rows = ranked_rows(result)
    win = winner_row(result, rows)
    lines = [
        f"# Dream Foundry report — {_md_cell(result.run_id)}",
        "",
        f"- **Objective:** {_md_cell(shorten(result.objective), 1000)}",
        f"- **Run:** `{_md_cell(result.run_id)}`",
        f"- **Timestamp:** {_md_cell(result.timestamp)}",
        f"- **Execution mode:** {_md_cell(result.execution_mode)}",
        f"- **Judge:** {_md_cell(result.judge)}",
        f"- **Speed scored on:** {speed_words(result)}",
    ]
    if result.competition:
        lines.append(f"- **Competition:** {_md_cell(result.competition)}")
    lines.append(f"- **Candidates:** {len(rows)}")
    for note in result.notes:
        lines.append(f"- **Note:** {_md_cell(note, 500)}")
    lines += ["", "## Winner", ""]
    decided = verdict.winner_md(result)  # repeated trials: mean, CI, or a tie
    if decided:
        lines += decided
    elif win and win.score:
        label = f"{win.name} ({win.description})" if win.description else win.name
        lines.append(f"🏆 **{_md_cell(label)}** (`{_md_cell(win.cid)}`) "
                     f"wins with **{fmt(win.score.total_score)}/100**")
    else:
        lines.append(f"**{NO_WINNER}.**")
    lines += ["", "## Leaderboard", "",
              "| Rank | Candidate | Result | Gates | Success | Quality | Speed | TOTAL "
              "| Runtime | CPU | Disqualified because |",
              "|---:|---|:---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        s = row.score
        rank = str(s.rank) if s and s.rank else "—"
        lines.append(
            f"| {rank} | **{_md_cell(row.name)}** (`{_md_cell(row.cid)}`) "
            f"| {'PASS' if row.passed else 'FAIL'} | {_gates_md(s)} "
            f"| {fmt(s.success if s else None)} | {fmt(s.quality_score if s else None)} "
            f"| {fmt(s.speed_score if s else None)} | **{fmt(s.total_score if s else None)}** "
            f"| {runtime(row.result)} | {cpu(row.result)} | {_md_cell(row.reason) or '—'} |"
        )
    lines += verdict.trials_md(result) + verdict.standings_md(result)
    post = winner_post(result)
    if win and post is not None:
        lines += ["", "## Winning post", "", *_fence(artifact_shown(post), "markdown")]
    lines += ["", "## Candidates"]
    for row in rows:
        lines += ["", f"### {_md_cell(row.name)} (`{_md_cell(row.cid)}`) — "
                      f"{'PASS' if row.passed else 'FAIL'}", ""]
        if row.description:
            lines += [f"*{_md_cell(row.description)}*", ""]
        lines += [f"- **{k}:** {_md_cell(v, 500)}" for k, v in row_facts(row)]
        if row.score and row.score.quality_details:
            lines += ["", "**Quality details**", "", *_details_md(row.score.quality_details)]
        r = row.result
        if r and r.artifact_content is not None:
            lines += ["", f"**Artifact** (`{_md_cell(row.cid)}/discord_post.md`)", "",
                      *_fence(artifact_shown(r.artifact_content), "markdown")]
        else:
            lines += ["", "**Artifact:** none"]
        if r and r.output:
            lines += ["", f"**Output** (last {TAIL_LINES} lines)", "",
                      *_fence(output_tail(r.output), "text")]
    lines += ["", "---", f"Run `{_md_cell(result.run_id)}` · judge `{_md_cell(result.judge)}`"
              + (f" · definition `{_md_cell(result.definition_sha256[:12])}`"
                 if result.definition_sha256 else ""), ""]
    for n, line in enumerate(lines):
        if n:
            yield "\n"
        yield line
