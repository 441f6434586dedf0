"""What an event block of a post is: the one definition the judge and Discord share.

The judge (``parse``) reads one event out of each block; the Discord splitter
(``worker.discord``) never cuts a block across two messages. Both cut the post here, so
a post is split for Discord exactly where it was judged.

A block starts at a line that is only a bold title (``**Title**``, optionally after a
bullet, a number, ``#`` marks or an emoji; not a bold label such as ``**When:**`` or
``**Date**``), or at a markdown heading, which ends the event before it. The lines
before the first such line are the preamble. Lines are what ``str.splitlines`` says
they are, so a stray ``\\r`` or U+2028 separates lines for both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Field labels (``parse`` maps them to fields); a bold label alone is not a title.
LABELS = {
    "date": "date", "when": "date", "day": "date",
    "time": "time", "hours": "time",
    "location": "location", "where": "location", "venue": "location", "place": "location",
    "address": "location",
    "type": "type", "format": "type", "category": "type", "kind": "type",
    "url": "url", "link": "url", "links": "url", "register": "url", "registration": "url",
    "rsvp": "url", "website": "url", "tickets": "url", "more info": "url",
    "description": "description", "about": "description", "details": "description",
    "summary": "description",
}
_TITLE_RE = re.compile(
    r"^\s*(?:[-*+•]\s+|\d+[.)]\s+|#{1,6}\s+)?(?:[^\w\s*]+\s*)?\*\*(?P<title>[^*]+?)\*\*"
    r"\s*[^\w\s]*\s*$"
)
_HEADING_RE = re.compile(r"^\s*#{1,6}\s")


def title_of(line: str) -> str | None:
    """The event title if ``line`` is a title line, else None."""
    m = _TITLE_RE.match(line)
    if not m:
        return None
    title = m.group("title").strip()
    if not title or title.endswith((":", "：")) or title.lower() in LABELS:
        return None
    return title


@dataclass
class Block:
    """Consecutive lines of a post; ``title`` is None for the preamble and for a section
    under a markdown heading (no event)."""

    title: str | None
    line: int  # 1-based number of its first line
    lines: list[str] = field(default_factory=list)  # without line endings
    raw: list[str] = field(default_factory=list)  # the same lines with their endings

    @property
    def text(self) -> str:
        """The block as written (``\\r\\n`` as ``\\n``), without surrounding blank lines."""
        return "".join(self.raw).replace("\r\n", "\n").strip("\n")


def split_blocks(post: str | None) -> list[Block]:
    """The post as blocks, in order; the first is the (maybe empty) preamble."""
    text = post or ""
    blocks = [Block(None, 1)]
    for n, (line, raw) in enumerate(zip(text.splitlines(), text.splitlines(keepends=True),
                                        strict=True), start=1):
        title = title_of(line)
        if title is not None or _HEADING_RE.match(line):
            blocks.append(Block(title, n))
        blocks[-1].lines.append(line)
        blocks[-1].raw.append(raw)
    return blocks
