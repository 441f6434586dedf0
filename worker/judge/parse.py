"""Events out of a Discord-style markdown post, tolerant of how people really write them.

An event block (defined once, in ``blocks``, shared with the Discord splitter) starts at
a line that is only a bold title (``**Title**``, optionally after a bullet, a number,
``#`` marks or an emoji). Until the next title or markdown heading, lines are fields
found by label (``Date``/``When``, ``Time``, ``Location``/``Where``/``Venue``,
``Type``, ``URL``/``Link``/``RSVP``...) or by a leading emoji alone (📅 📍 🔗 ⏰ 🏷),
whatever bullets, bold or emojis surround them; any other text is description. A bold
line followed by no field at all is a section heading ("**This week**"), not an event,
so it cannot fail the every-event-has-a-date gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from worker.judge.blocks import LABELS, split_blocks

_EMOJI = {
    "📅": "date", "🗓": "date", "📆": "date",
    "📍": "location", "🏢": "location", "🌐": "location",
    "🔗": "url", "🎟": "url",
    "⏰": "time", "🕐": "time", "🕕": "time", "🕖": "time", "🕒": "time", "⌚": "time",
    "🏷": "type",
}
_LABEL_ALT = "|".join(sorted((re.escape(k) for k in LABELS), key=len, reverse=True))
_FIELD_RE = re.compile(
    r"^[^\w\[]*?(?P<label>" + _LABEL_ALT + r")\s*\**_*\s*(?:[:：]|[-–—](?=\s))\s*\**_*\s*"
    r"(?P<value>.*)$",
    re.IGNORECASE,
)
_RULE_RE = re.compile(r"^\s*(?:[-*_]\s*){3,}$")
_URL_RE = re.compile(r"https?://[^\s)>\]]+", re.IGNORECASE)
_MD_LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_LEADING_JUNK = re.compile(r"^[\s\-*+•>|_]*")


@dataclass
class ParsedEvent:
    title: str
    date: str = ""
    time: str = ""
    location: str = ""
    type: str = ""
    url: str = ""
    description: str = ""
    line: int = 0  # 1-based line of the title
    extra: list[str] = field(default_factory=list)

    @property
    def has_fields(self) -> bool:
        return any((self.date, self.time, self.location, self.type, self.url))

    def missing(self) -> list[str]:
        """Required fields (title, date, url) this event lacks."""
        return [n for n in ("title", "date", "url") if not getattr(self, n).strip()]


def _clean(value: str) -> str:
    return value.strip().strip("*_`").strip()


def _url_value(value: str) -> str:
    """A markdown link or bare URL inside the value; the raw value when there is none."""
    m = _MD_LINK_RE.search(value) or _URL_RE.search(value)
    return m.group(1) if m and m.re is _MD_LINK_RE else (m.group(0) if m else _clean(value))


def _field(line: str) -> tuple[str, str] | None:
    m = _FIELD_RE.match(line)
    if m:
        return LABELS[m.group("label").lower()], _clean(m.group("value"))
    stripped = _LEADING_JUNK.sub("", line)
    for emoji, name in _EMOJI.items():
        if stripped.startswith(emoji):
            rest = stripped[len(emoji):].lstrip("\ufe0f\u200d ").lstrip(":：").strip()
            return (name, _clean(rest)) if rest else None
    return None


def parse_events(markdown: str | None) -> list[ParsedEvent]:
    """Every event block of the post (``blocks.split_blocks``), in order; blocks without
    a title (the preamble, a section under a heading) and section headings dropped."""
    events: list[ParsedEvent] = []
    for block in split_blocks(markdown):
        if block.title is None:
            continue
        current = ParsedEvent(title=block.title, line=block.line)
        events.append(current)
        for line in block.lines[1:]:
            _read_line(current, line)
    for ev in events:
        ev.description = " ".join(x for x in ev.extra if x)
    return [ev for ev in events if ev.has_fields]


def _read_line(current: ParsedEvent, line: str) -> None:
    """One line of an event block: a field, a bare link, or description."""
    if not line.strip() or _RULE_RE.match(line):
        return
    found = _field(line)
    if found is None:
        rest = _LEADING_JUNK.sub("", line)
        if not current.url and rest.startswith(("http", "[", "<")) and _URL_RE.search(rest):
            current.url = _url_value(rest)  # a bare link line: the event's URL
        else:
            current.extra.append(_clean(rest))
        return
    name, value = found
    if name == "url":
        value = _url_value(value)
    if name == "description":
        current.extra.insert(0, value)
    elif not getattr(current, name):
        setattr(current, name, value)
