"""Per-event validation: is this a real, upcoming, Bay Area, AI event with a usable link?

Four independent checks, each giving ``valid`` (bool), ``score`` (0-100) and ``details``
(a human sentence that says why), combined into a weighted ``total_score``. An event is
``is_valid`` only when all four checks pass.

The reference date is always passed in (the run's timestamp) and never read from the
clock, so re-scoring an old run gives the same numbers.

Date bands (days from the reference date to the event):
    0..180 ahead -> 100, more than 180 ahead -> 75, 1..7 days ago -> 75,
    older -> 25, recurring ("Every Tuesday") -> 100, unparseable -> 0.
    Valid means score >= 75. A weekday prefix that contradicts the date ("Monday,
    January 28, 2026" when it is a Wednesday) caps the score at 25: a made-up date.
Location: a Bay Area city -> 100; "Online"/"Virtual" -> 75 and valid (attendable from
    SF, but not a local event); anywhere else or unknown -> 0.
AI: a keyword (AI, ML, LLM, GPT, agents, ...) as a whole word in title or description.
Link: https on a real-looking host -> 100; plain http -> 50 (invalid: not https);
    malformed, placeholder host (example.com, localhost, *.test, "fake") -> 0.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

date_type = date  # validate_event's parameter ``date`` shadows the class there

WEIGHTS = {"date": 0.30, "location": 0.25, "ai": 0.25, "link": 0.20}

FUTURE_WINDOW_DAYS = 180
RECENT_PAST_DAYS = 7

_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
_MONTHS.update({m.lower(): i for i, m in enumerate(calendar.month_abbr) if m})
_MONTHS["sept"] = 9
_WEEKDAYS = [d.lower() for d in calendar.day_name]  # monday .. sunday

_MONTH_RE = r"(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_WEEKDAY_RE = (r"(?:(?P<weekday>" + "|".join(_WEEKDAYS) + r"|mon|tues?|wed|thu(?:rs?)?|fri|sat|sun)"
               r"\.?,?\s+)?")
_ORD = r"(?:st|nd|rd|th)?"
_DATE_PATTERNS = [
    re.compile(r"\b(?P<year>\d{4})-(?P<mnum>\d{1,2})-(?P<day>\d{1,2})\b"),
    re.compile(r"\b(?P<mnum>\d{1,2})/(?P<day>\d{1,2})/(?P<year>\d{4})\b"),
    re.compile(r"\b" + _WEEKDAY_RE + _MONTH_RE + r"\s+(?P<day>\d{1,2})" + _ORD
               + r",?\s+(?P<year>\d{4})\b"),
    re.compile(r"\b" + _WEEKDAY_RE + r"(?P<day>\d{1,2})" + _ORD + r"\s+(?:of\s+)?" + _MONTH_RE
               + r",?\s+(?P<year>\d{4})\b"),
]
_RECURRING_RE = re.compile(
    r"\b(?:every|each)\s+(?:other\s+|\d(?:st|nd|rd|th)\s+|last\s+)?"
    r"(?:" + "|".join(_WEEKDAYS) + r"|week|weekday|month)s?\b"
    r"|\b(?:weekly|bi-?weekly|monthly)\b",
    re.IGNORECASE,
)

BAY_AREA = (
    "San Francisco", "SF", "SoMa", "Oakland", "Berkeley", "Emeryville", "Alameda",
    "Palo Alto", "Mountain View", "San Jose", "Menlo Park", "Sunnyvale", "Redwood City",
    "South San Francisco", "South SF", "Santa Clara", "Cupertino", "San Mateo", "Stanford",
    "Burlingame", "Hillsborough", "Foster City", "Daly City", "Fremont", "Milpitas",
    "Los Altos", "Walnut Creek", "San Rafael", "Bay Area",
)
ONLINE = ("Online", "Virtual", "Zoom", "Remote", "Livestream", "Live stream", "Google Meet")
ELSEWHERE = (
    "New York", "NYC", "NY", "Brooklyn", "Manhattan", "Queens", "New Jersey", "NJ",
    "Hoboken", "Los Angeles", "LA", "Seattle", "Boston", "Austin", "Chicago", "London",
    "Berlin", "Paris", "Toronto", "Miami", "Denver",
)
AI_KEYWORDS = (
    "AI", "A.I.", "GenAI", "ML", "MLOps", "LLM", "LLMs", "GPT", "ChatGPT", "agent", "agents",
    "agentic", "artificial intelligence", "machine learning", "deep learning", "neural",
    "neural network", "neural networks", "data science", "NLP", "natural language processing",
    "generative", "transformer", "transformers", "diffusion", "computer vision",
    "reinforcement learning", "RLHF", "RAG", "embeddings", "fine-tuning", "prompt engineering",
    "foundation model", "foundation models", "vector database", "vector databases",
    "multimodal", "chatbot", "OpenAI", "Anthropic", "Hugging Face", "PyTorch", "TensorFlow",
    "LangChain",
)
PLACEHOLDER_HOSTS = ("example.com", "example.org", "example.net", "localhost")
PLACEHOLDER_TLDS = ("test", "invalid", "example", "localhost", "local")
PLACEHOLDER_WORDS = ("fake", "placeholder", "yourwebsite", "your-website", "dummy")


def _words_re(words: tuple[str, ...], flags: int = re.IGNORECASE) -> re.Pattern[str]:
    """Whole-word alternation (longest first), so "email" never matches "ai"."""
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(r"(?<![\w.])(?:" + alts + r")(?![\w])", flags)


_BAY_RE = _words_re(BAY_AREA)
_ONLINE_RE = _words_re(ONLINE)
# Short place codes ("NY", "LA") only in capitals: "la" is a common word elsewhere.
_ELSEWHERE_LONG_RE = _words_re(tuple(p for p in ELSEWHERE if not p.isupper()))
_ELSEWHERE_CODE_RE = re.compile(r"\b(?:" + "|".join(p for p in ELSEWHERE if p.isupper()) + r")\b")
_AI_RE = _words_re(AI_KEYWORDS)
_URL_IN_TEXT = re.compile(r"\((\s*[a-z][a-z0-9+.-]*:[^)\s]*)\)|<([^>\s]+)>", re.IGNORECASE)
_HOST_RE = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_IP_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


@dataclass(frozen=True)
class Check:
    valid: bool
    score: float
    details: str


@dataclass(frozen=True)
class EventValidation:
    title: str
    is_valid: bool
    total_score: float
    date_valid: bool
    date_score: float
    date_details: str
    location_valid: bool
    location_score: float
    location_details: str
    ai_valid: bool
    ai_score: float
    ai_details: str
    link_valid: bool
    link_score: float
    link_details: str

    def to_dict(self) -> dict[str, Any]:
        """The shape stored in ``Score.quality_details``: title, verdict, checks."""
        d = asdict(self)
        checks = {
            name: {k: d[f"{name}_{k}"] for k in ("valid", "score", "details")}
            for name in WEIGHTS
        }
        return {"title": self.title, "is_valid": self.is_valid,
                "total_score": self.total_score, "checks": checks}


def reference_date(reference: datetime | date | str) -> date:
    """The calendar date of the run (as written in its own timezone)."""
    if isinstance(reference, datetime):
        return reference.date()
    if isinstance(reference, date):
        return reference
    text = str(reference).strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            raise ValueError(f"reference time {reference!r} is not an ISO date") from None


@dataclass(frozen=True)
class ParsedDate:
    value: date | None  # None: recurring
    recurring: bool = False
    weekday_mismatch: str | None = None


def parse_date(text: str | None) -> ParsedDate | None:
    """The first date found in ``text``; None when there is none (or not a real day)."""
    if not text:
        return None
    low = text.lower()
    for pattern in _DATE_PATTERNS:
        m = pattern.search(low)
        if not m:
            continue
        g = m.groupdict()
        month = int(g["mnum"]) if g.get("mnum") else _MONTHS[g["month"]]
        try:
            value = date(int(g["year"]), month, int(g["day"]))
        except ValueError:
            return None
        mismatch = None
        said = g.get("weekday")
        actual = _WEEKDAYS[value.weekday()]
        if said and not actual.startswith(said[:3]):
            mismatch = f"says {said.capitalize()} but {value:%B} {value.day}, {value.year} " \
                       f"is a {actual.capitalize()}"
        return ParsedDate(value, weekday_mismatch=mismatch)
    if _RECURRING_RE.search(low):
        return ParsedDate(None, recurring=True)
    return None


def check_date(text: str | None, reference: datetime | date | str) -> Check:
    ref = reference_date(reference)
    parsed = parse_date(text)
    if parsed is None:
        return Check(False, 0.0, f"unparseable date {text!r}" if text else "no date")
    if parsed.recurring:
        return Check(True, 100.0, f"recurring event ({text.strip()})")
    when = parsed.value
    assert when is not None
    delta = (when - ref).days
    if 0 <= delta <= FUTURE_WINDOW_DAYS:
        check = Check(True, 100.0, f"{when.isoformat()}: in {delta} days")
    elif delta > FUTURE_WINDOW_DAYS:
        check = Check(True, 75.0, f"{when.isoformat()}: {delta} days ahead (far future)")
    elif delta >= -RECENT_PAST_DAYS:
        check = Check(True, 75.0, f"{when.isoformat()}: {-delta} days ago (recent)")
    else:
        check = Check(False, 25.0, f"{when.isoformat()}: {-delta} days ago (past event)")
    if parsed.weekday_mismatch:
        return Check(False, min(check.score, 25.0), f"weekday mismatch: {parsed.weekday_mismatch}")
    return check


def check_location(text: str | None) -> Check:
    if not text or not text.strip():
        return Check(False, 0.0, "no location")
    bay = _BAY_RE.search(text)
    if bay:
        return Check(True, 100.0, f"Bay Area ({bay.group(0)})")
    if _ONLINE_RE.search(text):
        return Check(True, 75.0, "online event (attendable, but not local)")
    away = _ELSEWHERE_LONG_RE.search(text) or _ELSEWHERE_CODE_RE.search(text)
    if away:
        return Check(False, 0.0, f"outside the Bay Area ({away.group(0)})")
    return Check(False, 0.0, f"not a recognised Bay Area location: {text.strip()!r}")


def check_ai(title: str | None, description: str | None = None) -> Check:
    text = " ".join(t for t in (title, description) if t)
    found = sorted({m.group(0) for m in _AI_RE.finditer(text)}, key=str.lower)
    if found:
        return Check(True, 100.0, "AI keywords: " + ", ".join(found))
    return Check(False, 0.0, "no AI/ML keyword in title or description")


def extract_url(text: str | None) -> str:
    """The URL inside a markdown link ``[x](url)`` or ``<url>``, else the text itself."""
    if not text:
        return ""
    m = _URL_IN_TEXT.search(text)
    if m:
        return (m.group(1) or m.group(2)).strip()
    return text.strip().strip("*_`").strip()


def check_link(text: str | None) -> Check:
    url = extract_url(text)
    if not url:
        return Check(False, 0.0, "no URL")
    if any(c.isspace() for c in url):
        return Check(False, 0.0, f"malformed URL {url!r} (whitespace)")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return Check(False, 0.0, f"malformed URL {url!r}")
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return Check(False, 0.0, f"malformed URL {url!r} (needs http(s)://host)")
    if host in PLACEHOLDER_HOSTS or any(host.endswith("." + h) for h in PLACEHOLDER_HOSTS):
        return Check(False, 0.0, f"placeholder host {host}")
    labels = host.split(".")
    if labels[-1] in PLACEHOLDER_TLDS or any(w in host for w in PLACEHOLDER_WORDS):
        return Check(False, 0.0, f"placeholder host {host}")
    if _IP_RE.match(host):
        return Check(False, 25.0, f"bare IP address {host}")
    if not _HOST_RE.match(host):
        return Check(False, 0.0, f"malformed host {host!r}")
    if parts.scheme.lower() != "https":
        return Check(False, 50.0, f"not https ({host})")
    return Check(True, 100.0, f"https link on {host}")


def validate_event(
    title: str | None,
    date: str | None,  # the field's name in a post (shadows the class here)
    location: str | None,
    url: str | None,
    description: str | None = None,
    *,
    reference: datetime | date_type | str,
) -> EventValidation:
    """Run the four checks; ``reference`` is the run's timestamp (never the clock)."""
    d = check_date(date, reference)
    loc = check_location(location)
    ai = check_ai(title, description)
    link = check_link(url)
    total = (WEIGHTS["date"] * d.score + WEIGHTS["location"] * loc.score
             + WEIGHTS["ai"] * ai.score + WEIGHTS["link"] * link.score)
    return EventValidation(
        title=(title or "").strip(),
        is_valid=d.valid and loc.valid and ai.valid and link.valid,
        total_score=round(total, 2),
        date_valid=d.valid, date_score=d.score, date_details=d.details,
        location_valid=loc.valid, location_score=loc.score, location_details=loc.details,
        ai_valid=ai.valid, ai_score=ai.score, ai_details=ai.details,
        link_valid=link.valid, link_score=link.score, link_details=link.details,
    )

