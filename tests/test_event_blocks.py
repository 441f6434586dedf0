"""One definition of an event block: the Discord splitter cuts a post where the judge
reads its events (worker/judge/blocks.py), on a post written to tell them apart."""

from __future__ import annotations

from dataclasses import asdict

from worker import discord
from worker.judge import blocks
from worker.judge.parse import parse_events

# Each line is here because a different title rule would cut it elsewhere: a bulleted
# title, an emoji before the bold, a bold title with text after it (not a title), bold
# labels alone or with a colon (fields, not titles), a heading that ends an event, a
# heading that is a title, and line ends other than "\n" (a lone "\r", U+2028).
TRICKY = (
    "Here is this week's list.\n"
    "\n"
    "- **Bulleted Meetup**\n"
    "📅 Date: Mon 6 Jan\n"
    "🔗 https://example.com/bulleted\n"
    "**Lightning talks** after the break, free pizza\n"
    "\n"
    "🎤 **Open Mic Night**\n"
    "**When:** Tue 7 Jan\r"
    "**Date**\n"
    "Link: https://example.com/mic\n"
    "\n"
    "## Also this week\n"
    "Some section text that belongs to no event.\n"
    "\n"
    "### **Heading Hackathon**\n"
    "Date: Wed 8 Jan\u2028URL: https://example.com/hack\n"
    "\n"
    "1. **Numbered Workshop**\r\n"
    "Date: Thu 9 Jan\r\n"
    "RSVP: https://example.com/workshop\r\n"
)


def _events(post: str) -> list[dict]:
    return [{k: v for k, v in asdict(e).items() if k != "line"} for e in parse_events(post)]


def test_the_splitter_and_the_judge_cut_a_tricky_post_in_the_same_places() -> None:
    judged = _events(TRICKY)
    assert [e["title"] for e in judged] == [
        "Bulleted Meetup", "Open Mic Night", "Heading Hackathon", "Numbered Workshop"]
    assert judged[1]["url"] == "https://example.com/mic"  # read past "**Date**" and the \r
    assert judged[2]["url"] == "https://example.com/hack"  # U+2028 ends a line

    sent = discord.event_blocks(TRICKY)
    # Judging the blocks Discord gets one by one finds exactly the events of the whole
    # post: no event is cut across two blocks, no two events share one.
    assert [e for block in sent for e in _events(block)] == judged
    titled = [b for b in sent if _events(b)]
    assert len(titled) == len(judged)
    # The text after the heading is its own block, not the tail of the event before it.
    assert any(b.startswith("## Also this week") for b in sent)
    assert not any("Some section text" in b for b in titled)
    # Nothing is lost or reordered on the way to Discord.
    def lines(text: str) -> list[str]:
        return [x for x in text.splitlines() if x.strip()]

    assert lines("\n".join(sent)) == lines(TRICKY)


def test_packed_messages_never_cut_a_judged_event() -> None:
    """Packed into messages far smaller than the post, each event the judge found is
    whole inside one message."""
    sent = discord.event_blocks(TRICKY)
    messages = discord.pack(sent, limit=200)
    assert len(messages) > 2
    for block in sent:
        if _events(block):
            assert sum(block in m for m in messages) == 1, block


def test_both_sides_use_the_one_definition() -> None:
    """The splitter's blocks are ``blocks.split_blocks``'s, and so are the judge's: a
    change to the definition moves both."""
    got = [b.text for b in blocks.split_blocks(TRICKY) if b.text.strip()]
    assert discord.event_blocks(TRICKY) == got
    titles = [b.title for b in blocks.split_blocks(TRICKY) if b.title]
    assert titles == [e["title"] for e in _events(TRICKY)]
