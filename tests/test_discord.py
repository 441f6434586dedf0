"""Discord posting against a local fake webhook: splitting, 429s, failures, once-only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from worker import discord
from worker.records import CandidateInfo, CandidateResult, ForgeResult, Score

try:
    from tests.discord_server import WEBHOOK_PATH, DiscordServer
except ImportError:  # tests/ run as a plain directory on sys.path
    from discord_server import WEBHOOK_PATH, DiscordServer  # type: ignore[no-redef]

TOKEN = WEBHOOK_PATH.rsplit("/", 1)[-1]
HEADER = "🏆 **Agent Gamma (The Insider)** wins with 87.5/100"


def event(n: int, extra_lines: int = 3) -> str:
    lines = [f"**{n}. AI Meetup number {n} at a venue in SoMa**",
             f"📅 Tue, Mar {n % 28 + 1} · 6:00 PM",
             "**Where:** 88 Colin P Kelly Jr St, San Francisco",  # a label, not a title
             f"🔗 <https://lu.ma/ai-meetup-{n}>"]
    lines += [f"Details line {i} for event {n}: talks, demos, food and drinks."
              for i in range(extra_lines)]
    return "\n".join(lines)


def make_post(n_events: int = 25) -> str:
    intro = "# 🤖 AI Events in San Francisco — this week\n\nHand-picked meetups. RSVP early!"
    return intro + "\n\n" + "\n\n".join(event(i) for i in range(1, n_events + 1)) + "\n"


def make_result(post: str | None = None, winner: bool = True) -> ForgeResult:
    post = make_post() if post is None else post
    return ForgeResult(
        run_id="run-discord-1", objective="Generate weekly 'AI Events in San Francisco' post",
        timestamp="2025-03-08T17:00:00Z", execution_mode="local",
        candidates=[CandidateInfo("gamma", "Agent Gamma", "The Insider"),
                    CandidateInfo("beta", "Agent Beta", "The Scraper")],
        scores=[Score("gamma", 100, 90, 67.5, 87.5, winner, {"ok": winner}, rank=1),
                Score("beta", 0, 0, 0, 0, False, {"ok": False}, "crashed", rank=2)],
        winner_id="gamma" if winner else None, winner_score=87.5 if winner else None,
        winner_artifact=post if winner else None,
        results=[CandidateResult("gamma", success=True, artifact_content=post),
                 CandidateResult("beta", error_message="crashed")],
    )


@pytest.fixture(autouse=True)
def _fast_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(discord, "BACKOFF", 0.01)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and WEBHOOK_PATH not in text and "1234567890" not in text


# --------------------------------------------------------------------------- splitting


def test_announcement_splits_on_event_boundaries() -> None:
    post = make_post(25)
    messages = discord.announcement(make_result(post))
    assert len(messages) > 1
    assert all(len(m) <= 2000 and discord._len(m) <= 2000 for m in messages)
    assert messages[0].startswith(HEADER)
    assert "Generate weekly 'AI Events in San Francisco' post" in messages[0]
    blocks = discord.event_blocks(post)
    assert len(blocks) == 26  # the intro, then 25 events
    for i in range(1, 26):
        whole = event(i)
        assert sum(whole in m for m in messages) == 1, f"event {i} split or lost"
    # Order kept: the blocks appear in order through the messages.
    joined = "\n\n".join(messages)
    positions = [joined.index(b) for b in blocks]
    assert positions == sorted(positions)


def test_oversized_block_is_split_on_lines_as_last_resort() -> None:
    huge = event(1, extra_lines=80)  # one event of ~5000 chars
    monster_line = "x" * 4500
    post = f"intro\n\n{huge}\n\n**Monster**\n{monster_line}\n\n{event(2)}"
    messages = discord.announcement(make_result(post))
    assert all(discord._len(m) <= 2000 for m in messages)
    joined = "\n".join(messages)
    for line in huge.split("\n"):
        assert line in joined  # lines never cut, only the block
    assert sum(m.count("x") for m in messages) == 4500  # hard-cut, nothing lost
    assert any(event(2) in m for m in messages)
    assert joined.index("Details line 79 for event 1") < joined.index("**Monster**") \
        < joined.index(event(2))


def test_emoji_count_as_discord_counts_them() -> None:
    post = "\n\n".join(f"**E{i}**\n" + "🎉" * 300 for i in range(6))
    for m in discord.announcement(make_result(post)):
        assert len(m.encode("utf-16-le")) // 2 <= 2000


def test_a_long_post_is_cut_at_max_messages_and_says_so(tmp_path: Path) -> None:
    """An artifact needing ~55 messages: exactly MAX_MESSAGES go out, in order, the last
    one saying how many were left out; the record says it too."""
    post = make_post(300)
    whole = discord._all_messages(make_result(post), discord.LIMIT)  # before the cap
    assert len(whole) > 5 * discord.MAX_MESSAGES
    with DiscordServer() as server:
        record = discord.post_winner(make_result(post), tmp_path, server.url)
    sent = server.delivered
    assert len(server.requests) == len(sent) == discord.MAX_MESSAGES == record["messages"]
    assert record["posted"] is True and record["sent"] == discord.MAX_MESSAGES
    dropped = len(whole) - discord.MAX_MESSAGES
    assert sent[-1].endswith(discord.cut_note(dropped)), sent[-1][-300:]
    assert f"{dropped} more not sent" in record["cut"]
    assert all(discord._len(m) <= discord.LIMIT for m in sent)
    assert sent[:-1] == whole[:discord.MAX_MESSAGES - 1]  # the start, in order
    # Control: a post that fits is sent whole, with no note and no "cut" in the record.
    with DiscordServer() as server:
        record = discord.post_winner(make_result(), tmp_path / "small", server.url)
    assert "post cut" not in "".join(server.delivered) and "cut" not in record


def test_no_winner_posts_nothing(tmp_path: Path) -> None:
    assert discord.announcement(make_result(winner=False)) == []
    with DiscordServer() as server:
        record = discord.post_winner(make_result(winner=False), tmp_path, server.url)
    assert record["posted"] is False and record["skipped"] == "no winner"
    assert server.requests == []


# --------------------------------------------------------------------------- posting


def test_posts_every_message_in_order(tmp_path: Path) -> None:
    result = make_result()
    expected = discord.announcement(result)
    with DiscordServer() as server:
        record = discord.post_winner(result, tmp_path, server.url)
    assert record["posted"] is True and record["error"] is None
    assert record["messages"] == len(expected) == record["sent"]
    assert server.delivered == expected
    first = server.requests[0]
    assert first.query.get("wait") == ["true"]
    assert first.payload["allowed_mentions"] == {"parse": []}  # no @everyone from a post
    assert first.headers.get("Content-Type") == "application/json"
    assert json.loads((tmp_path / "discord.json").read_text()) == record
    assert (tmp_path / "discord.claim").exists()


@pytest.mark.parametrize("where", ["json", "header"])
def test_429_is_honoured(tmp_path: Path, where: str) -> None:
    result = make_result()
    expected = discord.announcement(result)
    with DiscordServer(rate_limit_first=2, retry_after=0.2, retry_after_in=where) as server:
        record = discord.post_winner(result, tmp_path, server.url)
    assert record["posted"] is True
    assert [r.status for r in server.requests[:2]] == [429, 429]
    assert len(server.requests) == len(expected) + 2
    assert server.delivered == expected and record["rate_limited"] == 2


def test_endless_429_gives_up_with_a_record(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord, "MAX_RETRIES", 2)
    with DiscordServer(rate_limit_first=1000, retry_after=0.01) as server:
        record = discord.post_winner(make_result(), tmp_path, server.url)
    assert record["posted"] is False and "429" in record["error"]
    assert len(server.requests) == 3  # bounded


@pytest.mark.parametrize("status", [404, 500])
def test_failure_is_recorded_not_raised(tmp_path: Path, status: int,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with DiscordServer(fail_status=status) as server:
        record = discord.post_winner(make_result(), tmp_path, server.url)
    assert record["posted"] is False and record["sent"] == 0
    assert f"HTTP {status}" in record["error"] and "message 1/" in record["error"]
    saved = json.loads((tmp_path / "discord.json").read_text())
    assert saved == record
    # 404 is final; a 500 is retried a bounded number of times.
    assert len(server.requests) == (1 if status == 404 else discord.MAX_RETRIES + 1)
    assert_no_secret(json.dumps(record), caplog.text)


def test_transient_500_then_success(tmp_path: Path) -> None:
    result = make_result()
    with DiscordServer(fail_status=500, fail_first=2) as server:
        record = discord.post_winner(result, tmp_path, server.url)
    assert record["posted"] is True and record["retries"] == 2
    assert server.delivered == discord.announcement(result)


def test_unreachable_webhook_is_recorded(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord, "MAX_RETRIES", 1)
    with DiscordServer() as server:
        url = server.url
    record = discord.post_winner(make_result(), tmp_path, url, timeout=2)
    assert record["posted"] is False and "could not reach the webhook" in record["error"]
    assert_no_secret(json.dumps(record))


def test_error_body_echoing_the_url_is_scrubbed(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"HTTP 400 from {server.url}?wait=true: bad token {TOKEN}")

    with DiscordServer() as server:
        monkeypatch.setattr(discord, "_send", boom)
        record = discord.post_winner(make_result(), tmp_path, server.url)
    assert record["posted"] is False and "<webhook>" in record["error"]
    assert_no_secret(json.dumps(record), (tmp_path / "discord.json").read_text())


def test_placeholder_url_posts_nothing(tmp_path: Path) -> None:
    record = discord.post_winner(make_result(), tmp_path, "your_webhook_url")
    assert record["posted"] is False and "DISCORD_WEBHOOK_URL" in record["error"]
    assert not (tmp_path / "discord.claim").exists()


# --------------------------------------------------------------------------- once only


def test_posts_at_most_once_per_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    result = make_result()
    n = len(discord.announcement(result))
    with DiscordServer() as server:
        first = discord.post_winner(result, tmp_path, server.url)
        second = discord.post_winner(result, tmp_path, server.url)
    assert first["posted"] is True and len(server.requests) == n
    assert second["skipped"] == "already posted"
    assert second["posted"] is True and second["messages"] == n  # the first call's record
    assert json.loads((tmp_path / "discord.json").read_text()) == first
    assert_no_secret(json.dumps(first), json.dumps(second), caplog.text)
    assert server.url not in caplog.text


# Callbacks claiming one post at the same moment, threads and processes behind a
# barrier: tests/test_races.py::test_callbacks_racing_to_post_one_run_post_once.


def test_force_posts_again(tmp_path: Path) -> None:
    result = make_result()
    n = len(discord.announcement(result))
    with DiscordServer() as server:
        discord.post_winner(result, tmp_path, server.url)
        again = discord.post_winner(result, tmp_path, server.url, force=True)
    assert again["posted"] is True and again["forced"] is True
    assert len(server.requests) == 2 * n
    assert server.delivered[:n] == server.delivered[n:]
    assert json.loads((tmp_path / "discord.json").read_text())["forced"] is True


def test_failed_post_is_not_retried_by_a_duplicate_callback(tmp_path: Path) -> None:
    """The claim stands after a failure: re-posting is an explicit `forge post`."""
    result = make_result()
    with DiscordServer(fail_status=404) as server:
        first = discord.post_winner(result, tmp_path, server.url)
        second = discord.post_winner(result, tmp_path, server.url)
    assert first["posted"] is False and len(server.requests) == 1
    assert second["skipped"] == "already posted" and second["error"] == first["error"]
    with DiscordServer() as server:
        forced = discord.post_winner(result, tmp_path, server.url, force=True)
    assert forced["posted"] is True and forced["error"] is None
