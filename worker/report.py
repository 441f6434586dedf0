"""Run reports (report.md, report.html). Deterministic: same result, same bytes."""

from __future__ import annotations

import html

from worker.records import ForgeResult


def render_markdown(result: ForgeResult) -> str:
    lines = [f"# Dream Foundry run {result.run_id}", "", f"**Objective:** {result.objective}", ""]
    lines += ["| Rank | Candidate | Qualified | Total |", "|---|---|---|---|"]
    for s in sorted(result.scores, key=lambda s: s.rank or 0):
        lines.append(f"| {s.rank} | {s.candidate_id} | {'PASS' if s.qualified else 'FAIL'} "
                     f"| {s.total_score:.1f} |")
    lines += ["", f"**Winner:** {result.winner_id or 'none'}", ""]
    return "\n".join(lines)


def render_html(result: ForgeResult) -> str:
    body = html.escape(render_markdown(result))
    return f"<!doctype html><html><head><meta charset='utf-8'></head><body><pre>{body}</pre></body></html>"
