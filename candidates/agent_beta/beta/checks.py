"""What Beta checks of each listing, and the audit that makes it the slow one.

A listing must come from a trusted source, have a computable date that is not past, a
well-formed https URL on a known event host, and no duplicate (same title and date, or
same URL). Each surviving event is then re-verified in VERIFY_PASSES independent passes
that normalise it and compute a key-stretched fingerprint; the passes must agree. That
audit is real CPU work (about 1-3 s).
"""

import datetime
import hashlib
import re
import unicodedata
from urllib.parse import urlsplit

VERIFY_PASSES = 3
FINGERPRINT_ROUNDS = 80_000


def event_date(when, today):
    """The date of a day_offset, or None for a recurring event."""
    if not isinstance(when, int):
        return None
    next_monday = today + datetime.timedelta(days=7 - today.weekday())
    return next_monday + datetime.timedelta(days=when)


def normalise(text):
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def problem(event, today, trusted, known_hosts):
    """Why this listing must not be posted, or None."""
    _id, title, when, _at, where, url, _kind, source = event
    if source not in trusted:
        return f"unverified source {source}"
    if isinstance(when, int):
        if event_date(when, today) < today:
            return "already happened"
    elif not re.match(r"^Every (Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day$", when):
        return f"unreadable date {when!r}"
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        return f"malformed URL {url!r}"
    if parts.hostname not in known_hosts:
        return f"unknown host {parts.hostname}"
    if not normalise(title) or not normalise(where):
        return "missing title or location"
    return None


def fingerprint(event):
    """A key-stretched digest of the normalised event (the audit trail's record)."""
    data = "|".join(normalise(str(f)).casefold() for f in event).encode("utf-8")
    return hashlib.pbkdf2_hmac("sha256", data, b"dream-foundry-audit", FINGERPRINT_ROUNDS).hex()


def audit(events):
    """Re-verify every event VERIFY_PASSES times; the fingerprints must agree."""
    for event in events:
        prints = {fingerprint(event) for _ in range(VERIFY_PASSES)}
        if len(prints) != 1:
            raise RuntimeError(f"unstable record {event[0]}")
