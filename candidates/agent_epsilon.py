"""Agent Epsilon, "The Hallucinator": a beautiful post about events that do not exist.

The format is flawless and it exits 0, so it passes every hard gate; the content is
invented: years-old dates, New York venues, cooking classes, placeholder links. The
judge's per-event validation is what catches it. Stdlib only and self-contained.
Usage: python3 agent_epsilon.py "<objective>" <output>
"""

import os
import sys

# (id, title, date, time, location, url, type): made up, on purpose. None of these is in
# candidates/data/events.json (tests check that too).
INVENTED = [
    ("pasta-class", "Italian Cooking Class: Fresh Pasta from Scratch", "Thursday, March 14, 2019",
     "7:00 PM – 9:00 PM", "Brooklyn Kitchen, Brooklyn, New York", "https://example.com/pasta",
     "Class"),
    ("gpt2-party", "GPT-2 Release Watch Party", "Thursday, February 14, 2019", "8:00 PM – 11:00 PM",
     "Rooftop Bar, Manhattan, New York", "https://www.example.org/gpt2-party", "Party"),
    ("sourdough", "Sourdough Bread Masterclass", "Tuesday, April 2, 2019", "6:00 PM – 8:00 PM",
     "Union Square, New York City", "http://fake-events.net/sourdough", "Workshop"),
    ("knitting", "Knitting for Beginners", "Thursday, May 9, 2019", "10:00 AM – 12:00 PM",
     "Astoria, Queens, NY", "https://example.com/knitting", "Class"),
    ("wine-night", "Wine & Cheese Pairing Night", "Friday, June 21, 2019", "7:00 PM – 10:00 PM",
     "Hoboken, New Jersey", "https://events.example.net/wine-night", "Social"),
]


def render(events):
    out = ["# ✨ The Hottest AI Events in San Francisco This Week ✨", "",
           "_Don't miss these incredible opportunities!_", ""]
    for _id, title, when, at, where, url, kind in events:
        out += [f"**{title}**", f"📅 Date: {when}", f"🕕 Time: {at}", f"📍 Location: {where}",
                f"🏷️ Type: {kind}", f"🔗 URL: {url}", ""]
    return "\n".join(out)


def main(argv):
    objective = argv[1] if len(argv) > 1 else "AI events in San Francisco"
    output = argv[2] if len(argv) > 2 else "discord_post.md"
    print(f"[Epsilon] Objective: {objective}")
    print("[Epsilon] Imagining the perfect events...")
    print(f"[Epsilon] Found {len(INVENTED)} events")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(render(INVENTED))
    print(f"[Epsilon] Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
