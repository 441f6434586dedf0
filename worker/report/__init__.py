"""Run reports: ``report.md`` and a self-contained ``report.html``.

Both are pure functions of the ForgeResult (no clock, no environment), because the run
directory is written idempotently: a redelivered chord callback must produce the same
bytes. Everything a candidate produced is hostile input: it is escaped before any markup
is added, long lines are cut, and the HTML loads nothing from the network.

* ``rows``: the row model (every candidate, its score and result, in rank order);
* ``text``: hostile text made safe to show (cleaning, cutting, number formatting);
* ``markdown``: ``report.md``;
* ``post``: Discord-style markdown to HTML, a security boundary (also the dashboard's);
* ``page``: ``report.html``, with ``report.css`` (package data) inlined.
"""

from __future__ import annotations

from worker.report.markdown import markdown_parts, render_markdown
from worker.report.page import html_parts, render_html
from worker.report.post import markdown_to_html
from worker.report.rows import NO_WINNER, speed_words
from worker.report.text import output_tail

__all__ = [
    "NO_WINNER",
    "html_parts",
    "markdown_parts",
    "markdown_to_html",
    "output_tail",
    "render_html",
    "render_markdown",
    "speed_words",
]
