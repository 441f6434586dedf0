"""The event feed, read from ``data/events.json`` beside the package.

Every listing of every source, noise included, as ``(id, title, day_offset | recurring,
time, location, url, type, source)``; ``day_offset`` counts from the Monday after today.
Which sources are trusted and which hosts are known event sites comes from the feed too.
"""

import json
from pathlib import Path

FEED_FILE = Path(__file__).resolve().parent.parent / "data" / "events.json"


def load(path=FEED_FILE):
    """(listings, trusted sources, known hosts)."""
    data = json.loads(Path(path).read_text("utf-8"))
    listings = [(e["id"], e["title"], e["day_offset"] if "day_offset" in e else e["recurring"],
                 e["time"], e["location"], e["url"], e["type"], e["source"])
                for e in data["events"]]
    trusted = tuple(s for s, info in data["sources"].items() if info["verified"])
    return listings, trusted, tuple(data["known_hosts"])
