"""Agent Alpha, "The Speed Demon": first past the post, corners cut on purpose.

Reads only the two biggest sources, skips weekend events, sorts by date and stops at
MAX_EVENTS. It checks nothing else: stale listings, cross-posted duplicates and broken
links in those sources go straight into the post. Stdlib only, self-contained (the
sandbox receives this file alone). Usage: python3 agent_alpha.py "<objective>" <output>
"""

import datetime
import os
import sys
import time

TOP_SOURCES = ("lu.ma", "meetup.com")
MAX_EVENTS = 10
# (id, title, day_offset | recurring, time, location, url, type, source); day_offset counts
# from the Monday after today. A copy of candidates/data/events.json (tests keep it in sync).
FEED = [
    ("sf-ai-builders", "SF AI Builders Meetup", 1, "6:00 PM – 9:00 PM",
     "GitHub HQ, 88 Colin P Kelly Jr St, San Francisco", "https://lu.ma/sf-ai-builders", "Meetup",
     "lu.ma"),
    ("llm-evals-workshop", "Hands-on LLM Evals Workshop", 2, "5:30 PM – 8:00 PM",
     "Anthropic, 500 Howard St, San Francisco", "https://lu.ma/llm-evals-workshop", "Workshop",
     "lu.ma"),
    ("genai-demo-night", "GenAI Demo Night", 3, "6:30 PM – 9:30 PM",
     "Shack15, Ferry Building, San Francisco", "https://lu.ma/genai-demo-night", "Demo Night",
     "lu.ma"),
    ("agents-hackathon", "AI Agents Weekend Hackathon", 5, "9:00 AM – 9:00 PM",
     "Frontier Tower, 995 Market St, San Francisco", "https://lu.ma/agents-hackathon-sf",
     "Hackathon", "lu.ma"),
    ("rag-deep-dive", "RAG in Production: Deep Dive", 8, "6:00 PM – 8:30 PM",
     "Databricks, 160 Spear St, San Francisco", "https://lu.ma/rag-deep-dive", "Talk", "lu.ma"),
    ("ai-tinkerers-coffee", "AI Tinkerers Morning Coffee", "Every Wednesday", "8:30 AM – 10:00 AM",
     "Sightglass Coffee, 270 7th St, San Francisco", "https://lu.ma/ai-tinkerers-coffee", "Meetup",
     "lu.ma"),
    ("vector-db-meetup", "Vector Databases Meetup", 9, "6:00 PM – 8:00 PM",
     "Pinecone, 548 Market St, San Francisco", "htps//lu.ma/vector-db-meetup", "Meetup", "lu.ma"),
    ("hugging-face-meetup", "Hugging Face Community Meetup", 24, "6:00 PM – 9:00 PM",
     "Cloudflare, 101 Townsend St, San Francisco", "https://lu.ma/hf-community-sf", "Meetup",
     "lu.ma"),
    ("sf-ai-builders-meetup-com", "SF AI Builders Meetup", 1, "6:00 PM – 9:00 PM",
     "GitHub HQ, 88 Colin P Kelly Jr St, San Francisco",
     "https://www.meetup.com/sf-ai-builders/events/301234567/", "Meetup", "meetup.com"),
    ("ml-paper-reading", "Bay Area Machine Learning Paper Reading Group", 2, "7:00 PM – 8:30 PM",
     "Hacker Dojo, 855 Maude Ave, Mountain View",
     "https://www.meetup.com/bay-area-ml-papers/events/301234601/", "Reading Group", "meetup.com"),
    ("oakland-ai-hack-night", "Oakland AI Hack Night", 3, "6:00 PM – 10:00 PM",
     "Oakstop, 1721 Broadway, Oakland", "https://www.meetup.com/oakland-ai/events/301234622/",
     "Hack Night", "meetup.com"),
    ("pytorch-sf", "PyTorch SF Meetup: Compiling Models with torch.compile", 10,
     "6:00 PM – 8:00 PM", "Meta, 1 Hacker Way, Menlo Park",
     "https://www.meetup.com/pytorch-sf/events/301234655/", "Meetup", "meetup.com"),
    ("ds-happy-hour-past", "Data Science Happy Hour", -17, "5:00 PM – 7:00 PM",
     "The Willows, 1604 Folsom St, San Francisco",
     "https://www.meetup.com/sf-data-science/events/301200001/", "Social", "meetup.com"),
    ("nlp-sunday-brunch", "NLP Sunday Brunch & Learn", 6, "11:00 AM – 1:00 PM",
     "Berkeley Skydeck, 2150 Shattuck Ave, Berkeley",
     "https://www.meetup.com/berkeley-nlp/events/301234688/", "Meetup", "meetup.com"),
    ("palo-alto-deep-learning", "Palo Alto Deep Learning Meetup", 14, "6:30 PM – 8:30 PM",
     "SAP Labs, 3410 Hillview Ave, Palo Alto",
     "https://www.meetup.com/palo-alto-deep-learning/events/301234700/", "Meetup", "meetup.com"),
    ("sf-data-science", "SF Data Science Meetup: Forecasting with Transformers", 22,
     "6:00 PM – 8:00 PM", "Galvanize, 44 Tehama St, San Francisco",
     "https://www.meetup.com/sf-data-science/events/301234711/", "Talk", "meetup.com"),
]


def event_date(when, today):
    """The date of a day_offset, or None for a recurring event."""
    if not isinstance(when, int):
        return None
    next_monday = today + datetime.timedelta(days=7 - today.weekday())
    return next_monday + datetime.timedelta(days=when)


def is_weekend(when, today):
    d = event_date(when, today)
    return d is not None and d.weekday() >= 5


def sort_key(event, today):
    d = event_date(event[2], today)
    return (d is None, d or today)


def fmt_date(when, today):
    d = event_date(when, today)
    return when if d is None else f"{d:%A}, {d:%B} {d.day}, {d.year}"


def render(events, today):
    monday = today + datetime.timedelta(days=7 - today.weekday())
    out = [f"# ⚡ AI Events in San Francisco — Week of {monday:%B} {monday.day}, {monday.year}",
           "", "_Fresh from lu.ma and Meetup, served fast._", ""]
    for _id, title, when, at, where, url, kind, _source in events:
        out += [f"**{title}**", f"📅 Date: {fmt_date(when, today)}", f"🕕 Time: {at}",
                f"📍 Location: {where}", f"🏷️ Type: {kind}", f"🔗 URL: {url}", ""]
    return "\n".join(out)


def main(argv):
    objective = argv[1] if len(argv) > 1 else "AI events in San Francisco"
    output = argv[2] if len(argv) > 2 else "discord_post.md"
    t0 = time.perf_counter()
    today = datetime.date.today()
    print(f"[Alpha] Objective: {objective}")
    picked = [e for e in FEED if e[7] in TOP_SOURCES]
    print(f"[Alpha] Scraped {len(picked)} listings from {', '.join(TOP_SOURCES)}")
    weekday = sorted((e for e in picked if not is_weekend(e[2], today)),
                     key=lambda e: sort_key(e, today))
    events = weekday[:MAX_EVENTS]
    print(f"[Alpha] Found {len(events)} events")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(render(events, today))
    print(f"[Alpha] Wrote {output} in {time.perf_counter() - t0:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
