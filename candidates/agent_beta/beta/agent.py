"""Beta's run: load the feed, drop every bad listing, audit the rest, post them."""

import datetime
import os
import time

import eventpost  # the project's requirement (requirements.txt)

from beta import checks, feed


def fmt_date(when, today):
    d = checks.event_date(when, today)
    return when if d is None else f"{d:%A}, {d:%B} {d.day}, {d.year}"


def render(events, today, checked):
    monday = today + datetime.timedelta(days=7 - today.weekday())
    out = eventpost.heading(f"🤖 AI Events in San Francisco — Week of {monday:%B} {monday.day}, "
                            f"{monday.year}", f"Every listing verified: {len(events)} of "
                            f"{checked} passed.")
    for _id, title, when, at, where, url, kind, _source in events:
        out += eventpost.event_block(checks.normalise(title), fmt_date(when, today), at,
                                     checks.normalise(where), kind, url)
    return "\n".join(out)


def main(argv):
    objective = argv[1] if len(argv) > 1 else "AI events in San Francisco"
    output = argv[2] if len(argv) > 2 else "discord_post.md"
    t0 = time.perf_counter()
    today = datetime.date.today()
    listings, trusted, known_hosts = feed.load()
    print(f"[Beta] Objective: {objective}")
    print(f"[Beta] Checking {len(listings)} listings from every source...")
    kept, seen = [], set()
    for event in listings:
        why = checks.problem(event, today, trusted, known_hosts)
        keys = {(checks.normalise(event[1]).casefold(), str(event[2])), event[5].rstrip("/")}
        if why is None and keys & seen:
            why = "duplicate"
        if why:
            print(f"[Beta] Dropped {event[0]}: {why}")
            continue
        seen |= keys
        kept.append(event)
    print(f"[Beta] Auditing {len(kept)} events ({checks.VERIFY_PASSES} passes each)...")
    checks.audit(kept)
    kept.sort(key=lambda e: (checks.event_date(e[2], today) is None,
                             checks.event_date(e[2], today) or today))
    print(f"[Beta] Found {len(kept)} events")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(render(kept, today, len(listings)))
    print(f"[Beta] Wrote {output} in {time.perf_counter() - t0:.2f}s")
    return 0
