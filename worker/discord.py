"""Post the winner of a run to a Discord webhook, at most once per run.

The chord body can run twice (a redelivered callback), so posting is claimed with an
exclusive create of ``discord.claim`` in the run directory; only the claimant posts.
A post is at most ``MAX_MESSAGES`` messages: a longer one is cut, and its last message
and the record say so. The objective in the announcement is shown shortened.
Failures become a record (``discord.json``), never an exception: a run is complete
whether or not Discord answered. The webhook URL is a secret: it never reaches a
record, a log line or an error message.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from worker.config import is_placeholder
from worker.judge.blocks import split_blocks
from worker.records import ForgeResult
from worker.validation import contained, shorten

logger = logging.getLogger("dream_foundry")

LIMIT = 2000  # Discord's message limit, in characters
MAX_MESSAGES = 10  # per run: a post needing more is cut (the run directory has it all)
CLAIM = "discord.claim"
RECORD = "discord.json"
MAX_RETRIES = 5  # per message, for 429 and 5xx/network errors
MAX_RETRY_AFTER = 60.0  # seconds: never sleep longer than this on one 429
BACKOFF = 1.0  # seconds, doubled per retry, for 5xx/network errors
USER_AGENT = "DiscordBot (dream-foundry, 1.0)"

def _len(text: str) -> int:
    """Length as Discord counts it (UTF-16 code units: an emoji may count twice)."""
    return len(text.encode("utf-16-le")) // 2


def event_blocks(post: str) -> list[str]:
    """The post cut into blocks: the preamble, then one block per event, in order. The
    blocks are the judge's (``worker.judge.blocks``): a post is split where it is judged."""
    return [text for b in split_blocks(post) if (text := b.text).strip()]


def _split_long(block: str, limit: int) -> list[str]:
    """Last resort for one block over the limit: whole lines, then hard cuts."""
    parts: list[str] = []
    current = ""
    for line in block.split("\n"):
        while _len(line) > limit:  # a single line over the limit: cut it
            cut = limit
            while _len(line[:cut]) > limit:
                cut -= 1
            if current:
                parts.append(current)
                current = ""
            parts.append(line[:cut])
            line = line[cut:]
        candidate = f"{current}\n{line}" if current else line
        if _len(candidate) <= limit:
            current = candidate
        else:
            parts.append(current)
            current = line
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()]


def pack(blocks: list[str], limit: int = LIMIT) -> list[str]:
    """Greedy packing of blocks into messages of at most ``limit``; a block is never split
    unless it alone exceeds the limit."""
    messages: list[str] = []
    current = ""
    for block in blocks:
        pieces = [block] if _len(block) <= limit else _split_long(block, limit)
        for piece in pieces:
            candidate = f"{current}\n\n{piece}" if current else piece
            if _len(candidate) <= limit:
                current = candidate
            else:
                messages.append(current)
                current = piece
    if current:
        messages.append(current)
    return messages


def _winner_name(result: ForgeResult) -> tuple[str, str]:
    info = next((c for c in result.candidates if c.id == result.winner_id), None)
    name = (info.name if info and info.name else None) or result.winner_id or "?"
    return name, (info.description if info else "") or ""


def _winner_post(result: ForgeResult) -> str:
    if result.winner_artifact is not None:
        return result.winner_artifact
    r = result.result_for(result.winner_id) if result.winner_id else None
    return (r.artifact_content if r else None) or ""


def cut_note(dropped: int) -> str:
    return (f"*[post cut: {dropped} more message(s) not sent; the whole post is in the run "
            "directory]*")


def cap(messages: list[str], limit: int = LIMIT,
        max_messages: int = MAX_MESSAGES) -> tuple[list[str], int]:
    """At most ``max_messages`` messages, the last one ending with a note that the post
    was cut; returns (messages, how many were dropped)."""
    if len(messages) <= max_messages:
        return messages, 0
    dropped = len(messages) - max_messages
    kept = messages[:max_messages]
    note = cut_note(dropped)
    last = kept[-1]
    while last and _len(f"{last}\n\n{note}") > limit:
        last = last[: max(0, len(last) - max(1, _len(f"{last}\n\n{note}") - limit))]
    kept[-1] = f"{last}\n\n{note}" if last.strip() else note
    return kept, dropped


def announcement(result: ForgeResult, limit: int = LIMIT,
                 max_messages: int = MAX_MESSAGES) -> list[str]:
    """The messages announcing the winner, in order ([] when there is no winner), at most
    ``max_messages`` of them."""
    return cap(_all_messages(result, limit), limit, max_messages)[0]


def _all_messages(result: ForgeResult, limit: int) -> list[str]:
    if not result.winner_id:
        return []
    name, description = _winner_name(result)
    label = f"{name} ({description})" if description else name
    score = result.winner_score
    if score is None:
        s = result.score_for(result.winner_id)
        score = s.total_score if s else None
    wins = f" wins with {score:.1f}/100" if isinstance(score, int | float) else " wins"
    objective = shorten(result.objective)
    header = f"🏆 **{label}**{wins}"
    if result.trials > 1:
        header = _trials_header(result, label)
    line = (result.standings or {}).get("season_line")
    if line:
        header += f"\n{line}"
    header += f"\n*{objective}*" if objective else ""
    return pack([header, *event_blocks(_winner_post(result))], limit)


def _trials_header(result: ForgeResult, label: str) -> str:
    """The announcement of a run of repeated trials: the mean and its 95% interval, and
    in a tie no crown: who is tied, and why this post was chosen (the documented rule,
    worker/judge/trials.py)."""
    me = result.summary_for(result.winner_id or "") or {}
    k = me.get("trials", result.trials)
    mean = (f"mean {me.get('mean', 0):.1f}/100 over {k} trials (95% CI "
            f"{me.get('ci_low', 0):.1f}-{me.get('ci_high', 0):.1f})")
    if not result.tied:
        return f"🏆 **{label}** wins with a {mean}"
    names = {c.id: c.name or c.id for c in result.candidates}
    verdict = result.verdict or {}
    tied = ", ".join(names.get(c, c) for c in verdict.get("contenders") or ())
    reason = str(verdict.get("reason") or "")
    why = reason.partition("; post goes to ")[2].partition(" by ")[2] or "the tie-break rule"
    return (f"🤝 **Statistically tied:** {tied}: no outright winner over {k} trials (the "
            f"95% interval of the difference includes zero).\n"
            f"Post by **{label}**, {mean}, chosen by {why}")


# --------------------------------------------------------------------------- posting


def _with_wait(url: str) -> str:
    """Ask Discord to answer with the message (so a failure is known before the next)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "wait"] + [("wait", "true")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _scrub(text: str, url: str) -> str:
    """Remove the webhook URL and its path pieces (id, token) from a message."""
    if not url:
        return text
    secrets = {url, _with_wait(url)}
    try:
        secrets |= {p for p in urlsplit(url).path.split("/") if len(p) >= 8}
    except ValueError:
        pass
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "<webhook>")
    return text


def _retry_after(err: urllib.error.HTTPError, body: bytes) -> float:
    try:
        value = float(json.loads(body.decode("utf-8", "replace")).get("retry_after"))
    except (ValueError, TypeError, AttributeError):
        try:
            value = float(err.headers.get("Retry-After", "1"))
        except (TypeError, ValueError):
            value = 1.0
    return max(0.0, min(value, MAX_RETRY_AFTER))


def _send(url: str, content: str, timeout: float, stats: dict[str, Any]) -> str | None:
    """POST one message, retrying 429 and transient failures; return its id, or raise."""
    payload = json.dumps({"content": content, "allowed_mentions": {"parse": []}}).encode()
    request = urllib.request.Request(
        _with_wait(url), data=payload, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    for attempt in range(MAX_RETRIES + 1):
        stats["requests"] += 1
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
            try:
                return str(json.loads(body).get("id")) if body else None
            except (ValueError, AttributeError):
                return None
        except urllib.error.HTTPError as err:
            body = err.read() or b""
            if attempt < MAX_RETRIES and err.code == 429:
                stats["rate_limited"] += 1
                time.sleep(_retry_after(err, body))
                continue
            if attempt < MAX_RETRIES and err.code >= 500:
                stats["retries"] += 1
                time.sleep(BACKOFF * 2**attempt)
                continue
            detail = body.decode("utf-8", "replace").strip()[:200]
            raise RuntimeError(f"HTTP {err.code} from the webhook"
                               + (f": {detail}" if detail else "")) from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            if attempt < MAX_RETRIES:
                stats["retries"] += 1
                time.sleep(BACKOFF * 2**attempt)
                continue
            reason = getattr(err, "reason", err)
            raise RuntimeError(f"could not reach the webhook: {reason}") from None
    raise RuntimeError("the webhook kept asking to retry")  # pragma: no cover


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    tmp = contained(run_dir, f".{RECORD}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", "utf-8")
    os.replace(tmp, contained(run_dir, RECORD))


def read_record(run_dir: Path) -> dict[str, Any] | None:
    try:  # (InvalidInput is a ValueError: a record resolving elsewhere is not read)
        return json.loads(contained(run_dir, RECORD).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _claim(run_dir: Path) -> bool:
    try:
        fd = os.open(contained(run_dir, CLAIM), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "claimed_at": time.time()}) + "\n")
    return True


def post_winner(result: ForgeResult, run_dir: str | os.PathLike, webhook_url: str | None, *,
                timeout: float = 10, force: bool = False) -> dict[str, Any]:
    """Post the winner's announcement once per run; return (and save) what happened.

    A second call finds the claim and returns the first call's record without posting;
    ``force=True`` (``forge post RUN_ID``) posts again on purpose. Never raises.
    """
    run_dir = Path(run_dir)
    record: dict[str, Any] = {"posted": False, "messages": 0, "sent": 0, "error": None,
                              "run_id": result.run_id, "winner_id": result.winner_id,
                              "forced": force}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        messages, dropped = cap(_all_messages(result, LIMIT))
        if not messages:
            record["skipped"] = "no winner"
        elif is_placeholder(webhook_url):
            record["error"] = "no webhook configured (set DISCORD_WEBHOOK_URL)"
        elif not _claim(run_dir) and not force:
            existing = read_record(run_dir)
            logger.info("[%s] Discord: already posted by an earlier callback", result.run_id)
            return {**existing, "skipped": "already posted"} if existing else \
                {"posted": False, "messages": 0, "skipped": "already posted"}
        else:
            record.update(messages=len(messages), sizes=[_len(m) for m in messages],
                          message_ids=[], requests=0, rate_limited=0, retries=0)
            if dropped:
                record["cut"] = (f"post cut at {MAX_MESSAGES} messages: {dropped} more not "
                                 "sent (the whole post is in the run directory)")
            try:
                for n, content in enumerate(messages, start=1):
                    record["message_ids"].append(
                        _send(str(webhook_url), content, timeout, record))
                    record["sent"] = n
                record["posted"] = True
            except Exception as exc:  # noqa: BLE001 - a failure is a record
                record["error"] = (f"message {record['sent'] + 1}/{len(messages)}: "
                                   + _scrub(str(exc), str(webhook_url)))
            record["posted_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    except Exception as exc:  # noqa: BLE001 - never let Discord break a run
        record["error"] = _scrub(f"{type(exc).__name__}: {exc}", str(webhook_url or ""))
    if record["error"]:
        logger.warning("[%s] Discord: not posted: %s", result.run_id, record["error"])
    elif record["posted"]:
        logger.info("[%s] Discord: posted %d message(s) to the webhook", result.run_id,
                    record["messages"])
    try:
        _write_record(run_dir, record)
    except (OSError, ValueError) as exc:  # ValueError: InvalidInput from contained()
        logger.warning("[%s] Discord: could not write %s: %s", result.run_id, RECORD, exc)
    return record
