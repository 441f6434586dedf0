"""Agent Beta, "The Perfectionist": reads everything, trusts nothing, takes its time.

Every listing of every source is checked: trusted source, date computable and not past,
URL well-formed https on a known event host, no duplicate (same title and date, or same
URL). Each surviving event is then re-verified in VERIFY_PASSES independent passes that
normalise it and compute a key-stretched fingerprint; the passes must agree. That audit
is real CPU work, which is why Beta is the slow one (about 1-3 s). Stdlib only and
self-contained (the sandbox receives this file alone).
Usage: python3 agent_beta.py "<objective>" <output>
"""

import datetime
import hashlib
import os
import re
import sys
import time
import unicodedata
from urllib.parse import urlsplit

TRUSTED_SOURCES = ("lu.ma", "meetup.com", "eventbrite.com", "cerebralvalley.ai")
KNOWN_HOSTS = ("lu.ma", "www.meetup.com", "www.eventbrite.com", "cerebralvalley.ai")
VERIFY_PASSES = 3
FINGERPRINT_ROUNDS = 80_000
# (id, title, day_offset | recurring, time, location, url, type, source); day_offset counts
# from the Monday after today. The full feed, noise included: a copy of
# candidates/data/events.json (tests keep the two identical).
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
    ("women-in-ai", "Women in AI Panel: Building Trustworthy Models", 4, "6:00 PM – 8:00 PM",
     "Salesforce Tower, 415 Mission St, San Francisco",
     "https://www.eventbrite.com/e/women-in-ai-panel-tickets-812345670001", "Panel",
     "eventbrite.com"),
    ("cv-workshop", "Computer Vision Workshop: From Pixels to Production", 11, "1:00 PM – 5:00 PM",
     "Plug and Play Tech Center, 440 N Wolfe Rd, Sunnyvale",
     "https://www.eventbrite.com/e/computer-vision-workshop-tickets-812345670002", "Workshop",
     "eventbrite.com"),
    ("generative-art-salon", "Generative AI Art Salon", 12, "7:00 PM – 10:00 PM",
     "Gray Area, 2665 Mission St, San Francisco",
     "https://www.eventbrite.com/e/generative-ai-art-salon-tickets-812345670003", "Exhibition",
     "eventbrite.com"),
    ("mlops-summit", "MLOps Bay Area Summit", 16, "9:00 AM – 5:00 PM",
     "McEnery Convention Center, San Jose",
     "https://www.eventbrite.com/e/mlops-bay-area-summit-tickets-812345670004", "Conference",
     "eventbrite.com"),
    ("genai-demo-night-eventbrite", "GenAI Demo Night", 3, "6:30 PM – 9:30 PM",
     "Shack15, Ferry Building, San Francisco",
     "https://www.eventbrite.com/e/genai-demo-night-tickets-812345670005", "Demo Night",
     "eventbrite.com"),
    ("prompt-office-hours", "Prompt Engineering Office Hours (Virtual)", 10, "12:00 PM – 1:00 PM",
     "Online (Zoom)",
     "https://www.eventbrite.com/e/prompt-engineering-office-hours-tickets-812345670006",
     "Workshop", "eventbrite.com"),
    ("founders-fireside", "Fireside Chat: Founders Building with Foundation Models", 7,
     "6:00 PM – 8:00 PM", "South Park Commons, 380 Brannan St, San Francisco",
     "https://cerebralvalley.ai/events/founders-fireside", "Talk", "cerebralvalley.ai"),
    ("hai-rlhf-seminar", "Stanford HAI Seminar: Reinforcement Learning from Human Feedback", 9,
     "12:00 PM – 1:15 PM", "Gates Computer Science Building, Stanford",
     "https://cerebralvalley.ai/events/hai-rlhf-seminar", "Talk", "cerebralvalley.ai"),
    ("llm-lunch-redwood", "LLM Lunch & Learn", 15, "12:00 PM – 1:30 PM",
     "Box, 900 Jefferson Ave, Redwood City",
     "https://cerebralvalley.ai/events/llm-lunch-redwood-city", "Talk", "cerebralvalley.ai"),
    ("bair-open-house", "Berkeley AI Research (BAIR) Open House", 18, "2:00 PM – 6:00 PM",
     "Berkeley Way West, 2121 Berkeley Way, Berkeley",
     "https://cerebralvalley.ai/events/bair-open-house", "Open House", "cerebralvalley.ai"),
    ("nn-from-scratch", "Neural Networks from Scratch Workshop", 23, "6:00 PM – 9:00 PM",
     "Noisebridge, 272 Capp St, San Francisco", "https://cerebralvalley.ai/events/nn-from-scratch",
     "Workshop", "cerebralvalley.ai"),
    ("gpt-launch-party", "Secret GPT-5 Launch Party (Invite Only)", 4, "10:00 PM – late",
     "Somewhere in SoMa, San Francisco",
     "https://www.reddit.com/r/bayarea/comments/1abc23/secret_gpt5_party/", "Party", "reddit.com"),
    ("ai-networking-mixer", "AI Networking Mixer", 3, "7:00 PM – 9:00 PM", "San Francisco",
     "https://ai-events-hub.biz/sf/ai-networking-mixer", "Networking", "ai-events-hub.biz"),
    ("gpu-giveaway", "Free GPU Giveaway Meetup", 8, "TBD", "TBD",
     "https://twitter.com/gpu_deals_sf/status/1790000000000000000", "Meetup", "twitter.com"),
]


def event_date(when, today):
    """The date of a day_offset, or None for a recurring event."""
    if not isinstance(when, int):
        return None
    next_monday = today + datetime.timedelta(days=7 - today.weekday())
    return next_monday + datetime.timedelta(days=when)


def normalise(text):
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def problem(event, today):
    """Why this listing must not be posted, or None."""
    _id, title, when, _at, where, url, _kind, source = event
    if source not in TRUSTED_SOURCES:
        return f"unverified source {source}"
    if isinstance(when, int):
        if event_date(when, today) < today:
            return "already happened"
    elif not re.match(r"^Every (Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day$", when):
        return f"unreadable date {when!r}"
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        return f"malformed URL {url!r}"
    if parts.hostname not in KNOWN_HOSTS:
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


def fmt_date(when, today):
    d = event_date(when, today)
    return when if d is None else f"{d:%A}, {d:%B} {d.day}, {d.year}"


def render(events, today, checked):
    monday = today + datetime.timedelta(days=7 - today.weekday())
    out = [f"# 🤖 AI Events in San Francisco — Week of {monday:%B} {monday.day}, {monday.year}",
           "", f"_Every listing verified: {len(events)} of {checked} passed._", ""]
    for _id, title, when, at, where, url, kind, _source in events:
        out += [f"**{normalise(title)}**", f"📅 Date: {fmt_date(when, today)}",
                f"🕕 Time: {at}", f"📍 Location: {normalise(where)}", f"🏷️ Type: {kind}",
                f"🔗 URL: {url}", ""]
    return "\n".join(out)


def main(argv):
    objective = argv[1] if len(argv) > 1 else "AI events in San Francisco"
    output = argv[2] if len(argv) > 2 else "discord_post.md"
    t0 = time.perf_counter()
    today = datetime.date.today()
    print(f"[Beta] Objective: {objective}")
    print(f"[Beta] Checking {len(FEED)} listings from every source...")
    kept, seen = [], set()
    for event in FEED:
        why = problem(event, today)
        keys = {(normalise(event[1]).casefold(), str(event[2])), event[5].rstrip("/")}
        if why is None and keys & seen:
            why = "duplicate"
        if why:
            print(f"[Beta] Dropped {event[0]}: {why}")
            continue
        seen |= keys
        kept.append(event)
    print(f"[Beta] Auditing {len(kept)} events ({VERIFY_PASSES} passes each)...")
    audit(kept)
    kept.sort(key=lambda e: (event_date(e[2], today) is None, event_date(e[2], today) or today))
    print(f"[Beta] Found {len(kept)} events")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as fh:
        fh.write(render(kept, today, len(FEED)))
    print(f"[Beta] Wrote {output} in {time.perf_counter() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
