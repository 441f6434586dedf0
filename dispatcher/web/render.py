"""The templates' environment and filters: how values become text in a page.

Autoescape is on for every template: whatever a candidate or its manifest wrote reaches
the page as text. The two filters that return markup escape everything themselves:
``discord`` (worker/report/post.py's renderer of Discord markdown, a security boundary) and
``details`` (a judge's details of any shape).
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from dispatcher.web.live import LiveCandidate
from worker.report import markdown_to_html, output_tail
from worker.validation import shorten


def _when(value: datetime | None) -> str:
    return "—" if value is None else f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _num(value: Any, digits: int = 1) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if f != f else f"{f:.{digits}f}"


def _secs(value: Any) -> str:
    text = _num(value, 2)
    return text if text == "—" else f"{text}s"


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _elapsed(c: LiveCandidate) -> str:
    if c.state == "done":
        return _secs(c.runtime_seconds)
    if c.started_at is None:
        return "—"
    return _clock((datetime.now(UTC) - c.started_at).total_seconds())


def _discord_html(text: str) -> Markup:
    """A post as Discord shows it: worker/report/post.py's renderer escapes every character
    before it adds markup, and links only http(s) URLs."""
    return Markup(markdown_to_html(text))


def _tail(output: str | None) -> str:
    return output_tail(output)


def _cut(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _e(value: Any, limit: int = 1000) -> str:
    return html.escape(_cut(value, limit), quote=True)


def _details(value: Any) -> Markup:
    """A judge's details (no fixed shape) as HTML. Every key and value is escaped here
    (``html.escape``) before it meets markup; a function, not a template macro, because
    a run page holds thousands of these cells (a macro made it 3x slower)."""
    return Markup(_details_html(value, 0))


def _details_html(value: Any, depth: int) -> str:
    if isinstance(value, bool):
        return '<span class="gate ok">✓</span>' if value else '<span class="gate no">✗</span>'
    if value is None:
        return "—"
    if isinstance(value, str | int | float):
        return _e(value)
    if depth >= 3:
        return f"<code>{_e(json.dumps(value, default=str), 300)}</code>"
    if isinstance(value, dict):
        if not value:
            return "—"
        if all(isinstance(v, dict) and isinstance(v.get("valid"), bool)
               for v in value.values()):  # named checks: {valid, score?, details?}
            out = []
            for k, v in value.items():
                score = v.get("score")
                score = f" · {score:.0f}" if isinstance(score, int | float) \
                    and not isinstance(score, bool) else ""
                note = f' <span class="muted">{_e(v["details"], 300)}</span>' \
                    if v.get("details") else ""
                ok = v["valid"]
                out.append(f'<div class="chk"><span class="gate {"ok" if ok else "no"}">'
                           f'{"✓" if ok else "✗"} {_e(k)}{score}</span>{note}</div>')
            return "".join(out)
        return '<dl class="kv">' + "".join(
            f"<dt>{_e(k)}</dt><dd>{_details_html(v, depth + 1)}</dd>"
            for k, v in list(value.items())[:40]) + "</dl>"
    if isinstance(value, list | tuple):
        if not value:
            return "—"
        shown = value[:100]
        more = f'<p class="muted">… {len(value) - 100} more</p>' if len(value) > 100 else ""
        if all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for row in value for k in row))[:10]
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{_details_html(row.get(c), depth + 1)}</td>"
                                            for c in cols) + "</tr>" for row in shown)
            return f'<table class="qd"><tr>{head}</tr>{body}</table>{more}'
        return '<ul class="plain">' + "".join(
            f"<li>{_details_html(v, depth + 1)}</li>" for v in shown) + f"</ul>{more}"
    return _e(value)


def environment(templates: Path) -> Environment:
    env = Environment(loader=FileSystemLoader(templates),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters.update(when=_when, num=_num, secs=_secs, elapsed=_elapsed, tail=_tail,
                       discord=_discord_html, shorten=shorten, details=_details,
                       epoch=lambda d: f"{d.timestamp():.3f}" if d else "")
    return env
