"""A candidate's score over time as a small inline SVG (no script, no external asset).

Everything in it is a number the code computed, or text escaped here (the run ids in
each point's tooltip): the chart is markup the page embeds as it is.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from markupsafe import Markup

W, H = 640, 180  # the drawing's own units; it scales to the page's width
PAD_L, PAD_R, PAD_T, PAD_B = 36, 12, 12, 26


def score_chart(history: Sequence) -> Markup:
    """``history``: ``worker.store.HistoryEntry`` items, newest first (as the store gives
    them). Points are runs, oldest left; a won run is a filled star-coloured dot, a run
    without a score (failed, or not judged yet) a hollow mark on the baseline."""
    runs = list(reversed(history))
    if not runs:
        return Markup("")
    n = len(runs)
    inner_w, inner_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(i: int) -> float:
        return PAD_L + (inner_w / 2 if n == 1 else inner_w * i / (n - 1))

    def y(score: float) -> float:
        return PAD_T + inner_h * (1 - max(0.0, min(100.0, score)) / 100)

    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
             f'aria-label="Total score per run, oldest to newest ({n} runs)">']
    for level in (0, 50, 100):
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y(level):.1f}" '
                     f'y2="{y(level):.1f}"/><text class="axis" x="{PAD_L - 6}" '
                     f'y="{y(level) + 4:.1f}" text-anchor="end">{level}</text>')
    segment: list[str] = []
    lines = []
    for i, h in enumerate(runs):
        if h.total_score is None:
            if len(segment) > 1:
                lines.append(segment)
            segment = []
        else:
            segment.append(f"{x(i):.1f},{y(h.total_score):.1f}")
    if len(segment) > 1:
        lines.append(segment)
    for seg in lines:
        parts.append(f'<polyline class="line" points="{" ".join(seg)}"/>')
    for i, h in enumerate(runs):
        when = f"{h.timestamp:%Y-%m-%d %H:%M}"
        if h.total_score is None:
            label = f"{h.run_id} · {when} · no score ({h.run_status})"
            parts.append(f'<circle class="pt none" cx="{x(i):.1f}" cy="{y(0):.1f}" r="4">'
                         f"<title>{html.escape(label)}</title></circle>")
            continue
        rank = f" · rank {h.rank}/{h.candidates_total}" if h.rank else ""
        label = f"{h.run_id} · {when} · {h.total_score:.1f}{rank}" + (" · won" if h.won else "")
        parts.append(f'<circle class="pt{" won" if h.won else ""}" cx="{x(i):.1f}" '
                     f'cy="{y(h.total_score):.1f}" r="{5 if h.won else 3.5}">'
                     f"<title>{html.escape(label)}</title></circle>")
    first, last = runs[0].timestamp, runs[-1].timestamp
    parts.append(f'<text class="axis" x="{PAD_L}" y="{H - 6}">{first:%Y-%m-%d}</text>')
    if n > 1:
        parts.append(f'<text class="axis" x="{W - PAD_R}" y="{H - 6}" '
                     f'text-anchor="end">{last:%Y-%m-%d}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
