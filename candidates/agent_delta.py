"""Agent Delta, "The Crasher": does the work, writes its post, then falls over.

It writes a perfectly good post, then computes "average RSVPs per event" over an empty
list of RSVP counts and dies with ZeroDivisionError (exit code 1). The demo uses it to
show that a crash disqualifies a candidate even when it left an artifact behind.
Stdlib only and self-contained. Usage: python3 agent_delta.py "<objective>" <output>
"""

import datetime
import os
import sys

# (id, title, day_offset | recurring, time, location, url, type, source); day_offset counts
# from the Monday after today. Entries of candidates/data/events.json (tests keep them in sync).
FEED = [
    ("sf-ai-builders", "SF AI Builders Meetup", 1, "6:00 PM – 9:00 PM",
     "GitHub HQ, 88 Colin P Kelly Jr St, San Francisco", "https://lu.ma/sf-ai-builders", "Meetup",
     "lu.ma"),
    ("llm-evals-workshop", "Hands-on LLM Evals Workshop", 2, "5:30 PM – 8:00 PM",
     "Anthropic, 500 Howard St, San Francisco", "https://lu.ma/llm-evals-workshop", "Workshop",
     "lu.ma"),
    ("rag-deep-dive", "RAG in Production: Deep Dive", 8, "6:00 PM – 8:30 PM",
     "Databricks, 160 Spear St, San Francisco", "https://lu.ma/rag-deep-dive", "Talk", "lu.ma"),
    ("women-in-ai", "Women in AI Panel: Building Trustworthy Models", 4, "6:00 PM – 8:00 PM",
     "Salesforce Tower, 415 Mission St, San Francisco",
     "https://www.eventbrite.com/e/women-in-ai-panel-tickets-812345670001", "Panel",
     "eventbrite.com"),
]


def event_date(when, today):
    next_monday = today + datetime.timedelta(days=7 - today.weekday())
    return next_monday + datetime.timedelta(days=when)


def render(events, today):
    out = ["# 💥 AI Events in San Francisco", ""]
    for _id, title, when, at, where, url, kind, _source in events:
        d = event_date(when, today)
        out += [f"**{title}**", f"📅 Date: {d:%A}, {d:%B} {d.day}, {d.year}", f"🕕 Time: {at}",
                f"📍 Location: {where}", f"🏷️ Type: {kind}", f"🔗 URL: {url}", ""]
    return "\n".join(out)


def main(argv):
    objective = argv[1] if len(argv) > 1 else "AI events in San Francisco"
    output = argv[2] if len(argv) > 2 else "discord_post.md"
    today = datetime.date.today()
    print(f"[Delta] Objective: {objective}")
    print(f"[Delta] Found {len(FEED)} events")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(render(FEED, today))
    print(f"[Delta] Wrote {output}; computing engagement stats...")
    rsvps = []  # the RSVP counts were never fetched
    average = sum(rsvps) / len(rsvps)  # ZeroDivisionError: the crash this agent exists for
    print(f"[Delta] Average RSVPs: {average:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
