"""Reports: deterministic, escaped, self-contained, and good to look at (screenshot)."""

from __future__ import annotations

import html
import json
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from worker import report
from worker.records import CandidateInfo, CandidateResult, ForgeResult, Score
from worker.rundir import render_files, write_run_dir

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).parent / "screenshots"

WINNING_POST = """\
# 🤖 AI Events in San Francisco — Week of March 9

Hand-picked AI meetups, talks and hack nights this week. RSVP early: they fill up!

**1. Generative AI Builders Meetup**
📅 Tue, Mar 10 · 6:00–9:00 PM
📍 GitHub HQ, 88 Colin P Kelly Jr St
🔗 <https://lu.ma/genai-builders-sf>
Lightning talks on agents in production, then demos and pizza.

**2. SF Machine Learning Paper Club**
📅 Wed, Mar 11 · 7:00 PM
📍 Frontier Tower, 995 Market St
🔗 [RSVP on Meetup](https://www.meetup.com/sf-ml-paper-club/events/123)
This week: *"Scaling test-time compute"*. Read it before you come.

**3. LLM Evals Hack Night**
📅 Thu, Mar 12 · 5:30 PM
📍 Anthropic-adjacent co-working, SoMa
- Bring a laptop
- Teams of 2–4, prizes for the best eval harness
🔗 https://partiful.com/e/llm-evals-hack

**4. AI Founders Breakfast**
📅 Fri, Mar 13 · 8:00 AM
📍 The Battery, 717 Battery St
🔗 https://lu.ma/ai-founders-breakfast

-# Curated by Dream Foundry · reply with events we missed
"""

TRACEBACK = """\
[Run] Starting...
[Install] requests==2.32.3 ok
Fetching https://lu.ma/sf?tag=ai ...
Traceback (most recent call last):
  File "/sandbox/agent_beta.py", line 88, in <module>
    main()
  File "/sandbox/agent_beta.py", line 71, in main
    events = parse(html)
  File "/sandbox/agent_beta.py", line 40, in parse
    return [e["title"] for e in data["events"]]
KeyError: 'events'
"""


def _details(n: int, valid: int) -> dict:
    """The events judge's shape (worker/judge/events.py), trimmed to what matters here."""
    titles = ["Generative AI Builders Meetup", "SF Machine Learning Paper Club",
              "LLM Evals Hack Night", "AI Founders Breakfast", "Robotics x LLM Demo Day"]
    events = []
    for i in range(n):
        ok = i < valid
        checks = {
            "date": {"valid": True, "score": 100.0,
                     "details": f"2025-03-{10 + i}: in {2 + i} days"},
            "location": {"valid": ok, "score": 100.0 if ok else 0.0,
                         "details": "Bay Area (San Francisco)" if ok else "no location"},
            "ai": {"valid": True, "score": 100.0, "details": "AI keywords: ai, llm"},
            "link": {"valid": ok, "score": 100.0 if ok else 0.0,
                     "details": "https URL" if ok else "placeholder host example.com"},
        }
        events.append({"title": titles[i % len(titles)], "is_valid": ok,
                       "total_score": 100.0 if ok else 55.0, "checks": checks})
    return {"event_count": n, "valid_count": valid, "duplicate_count": 0,
            "reference_date": "2025-03-08", "events": events}


def make_result(winner: bool = True) -> ForgeResult:
    """A realistic five-candidate run: one crash, one weak post, a clear winner."""
    infos = [
        CandidateInfo("alpha", "Agent Alpha", "The Speed Demon", "agent_alpha.py"),
        CandidateInfo("beta", "Agent Beta", "The Scraper", "agent_beta.py"),
        CandidateInfo("gamma", "Agent Gamma", "The Insider", "agent_gamma.py"),
        CandidateInfo("delta", "Agent Delta", "The Aggregator", "agent_delta.py"),
        CandidateInfo("epsilon", "Agent Epsilon", "The Minimalist", "agent_epsilon.py"),
    ]
    gates_ok = {"artifact": True, "artifact_length": True, "event_fields": True,
                "min_events": True, "exit_ok": True}
    # (id, success, quality, speed, total, qualified, runtime)
    table = [
        ("gamma", 100.0, 90.0, 67.5, 87.5, True, 3.9),
        ("alpha", 100.0, 72.0, 95.0, 82.2, True, 0.6),
        ("delta", 100.0, 68.0, 40.0, 68.8, True, 7.2),
        ("epsilon", 100.0, 18.0, 90.0, 48.8, True, 1.0),
        ("beta", 0.0, 0.0, 0.0, 0.0, False, 2.4),
    ]
    scores, results = [], []
    for rank, (cid, suc, qual, spd, tot, ok, rt) in enumerate(table, start=1):
        gates = dict(gates_ok) if ok else {g: False for g in gates_ok}
        n, valid = {"gamma": (4, 4), "alpha": (5, 4), "delta": (4, 3), "epsilon": (1, 1),
                    "beta": (0, 0)}[cid]
        scores.append(Score(cid, suc, qual, spd, tot, ok and winner, gates,
                            None if ok and winner else
                            ("Exited with code 1 (KeyError: 'events')" if cid == "beta"
                             else "below the quality gate"),
                            _details(n, valid) if n else {}, rank))
        post = {"gamma": WINNING_POST,
                "alpha": "**AI Events SF**\n- Meetup Tue https://lu.ma/x\n- Talk Wed\n",
                "delta": WINNING_POST.replace("Week of March 9", "This week"),
                "epsilon": "AI events: check meetup.com\n"}.get(cid)
        results.append(CandidateResult(
            candidate_id=cid, sandbox_id=f"local-{cid}-7f3a", success=ok,
            output=TRACEBACK if cid == "beta" else
            "[Run] Starting...\n" + "".join(f"[Fetch] source {i} ok\n" for i in range(80))
            + "[Done] wrote discord_post.md\n",
            artifact_content=post, runtime_seconds=rt,
            error_message="Exited with code 1" if cid == "beta" else None,
            exit_code=1 if cid == "beta" else 0,
            started_at="2025-03-08T17:00:01Z", finished_at="2025-03-08T17:00:05Z",
            worker="celery@forge-1", isolation="process"))
    return ForgeResult(
        run_id="run-20250308-170000-a1b2", objective="Generate weekly 'AI Events in San "
        "Francisco' post for Discord", timestamp="2025-03-08T17:00:00Z",
        execution_mode="local", candidates=infos, scores=scores,
        winner_id="gamma" if winner else None, winner_score=87.5 if winner else None,
        winner_artifact=WINNING_POST if winner else None,
        artifacts_dir="artifacts/run-20250308-170000-a1b2", results=results,
        notes=["Daytona not configured: ran locally"])


HOSTILE = (
    "<script>alert('x')</script>\n<img src=x onerror=alert(1)>\n"
    "**Click** [me](javascript:alert(1)) and [data](data:text/html,<b>x</b>)\n"
    '<a href="http://evil.example/x">phish</a> </pre></details></main>\n'
    "\x00\x07\x1b[31mred\x1b[0m \ud800 lone surrogate\n```\nfenced ``` inside\n"
    + "A" * 200_000 + "\n"
)


def hostile_result() -> ForgeResult:
    result = make_result()
    gamma = result.result_for("gamma")
    assert gamma is not None
    gamma.artifact_content = HOSTILE
    result.winner_artifact = HOSTILE
    result.objective = "<script>document.title='pwned'</script> objective"
    result.candidates[0].name = "<b onmouseover=alert(1)>Alpha</b>"
    result.candidates[0].description = "desc with </td></tr></table>"
    beta = result.result_for("beta")
    assert beta is not None
    beta.output = TRACEBACK + "</pre><script>alert(2)</script>\n" + "B" * 300_000
    result.scores[0].quality_details = {
        "weird": [{"<k>": ["<i>x</i>", None]}], "str": "<s>", "n": float("nan"),
        "nested": {"a": {"b": {"c": {"d": [1, 2]}}}}}
    return result


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.link_texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "a":
            self.link_texts.append("")

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] == "a":
            self.link_texts[-1] += data


def tags_of(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def link_texts(page: str) -> list[str]:
    parser = _Tags()
    parser.feed(page)
    return parser.link_texts


SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "header", "div", "ul",
             "ol", "li", "b", "section", "h1", "h2", "h3", "h4", "h5", "h6", "span", "small",
             "p", "br", "strong", "em", "u", "s", "code", "pre", "blockquote", "a", "table",
             "tr", "th", "td", "i", "details", "summary", "dl", "dt", "dd", "footer"}


# --------------------------------------------------------------------------- tests


def test_reports_are_deterministic(tmp_path: Path) -> None:
    result = make_result()
    again = ForgeResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert report.render_html(result) == report.render_html(again)
    assert report.render_markdown(result) == report.render_markdown(again)
    first = write_run_dir(result, tmp_path)
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    second = write_run_dir(again, tmp_path)
    assert second == first
    assert {p: p.read_bytes() for p in second.rglob("*") if p.is_file()} == before


def test_winner_and_leaderboard_are_shown() -> None:
    result = make_result()
    page = report.render_html(result)
    md = report.render_markdown(result)
    for text in (page, md):
        assert "Agent Gamma" in text and "The Insider" in text and "87.5" in text
        assert result.objective in html.unescape(text)
        assert result.run_id in text and "2025-03-08T17:00:00Z" in text and "local" in text
        assert "KeyError: &#x27;events&#x27;" in text or "KeyError: 'events'" in text
    assert page.count('class="badge pass"') >= 4 and page.count('class="badge fail"') >= 1
    assert md.count("| PASS |") == 4 and md.count("| FAIL |") == 1
    # Leaderboard in rank order, with the score breakdown and the gates.
    assert [page.index(f">{n}</b>") for n in ("Agent Gamma", "Agent Alpha", "Agent Delta",
                                                "Agent Epsilon", "Agent Beta")] == sorted(
        page.index(f">{n}</b>") for n in ("Agent Gamma", "Agent Alpha", "Agent Delta",
                                           "Agent Epsilon", "Agent Beta"))
    assert "✗ exit_ok" in page and "✓ min_events" in page and "82.2" in page
    # The winning post is rendered: headings, bold, links (http/https), lists.
    assert "<strong>1. Generative AI Builders Meetup</strong>" in page
    assert '<a href="https://lu.ma/genai-builders-sf"' in page
    assert '<a href="https://www.meetup.com/sf-ml-paper-club/events/123"' in page
    assert "<li>Bring a laptop</li>" in page
    assert "<h2>🤖 AI Events in San Francisco — Week of March 9</h2>" in page
    # Every candidate gets a collapsible section with its output tail.
    assert page.count("<details") == 5
    assert "[Fetch] source 79 ok" in page and "[Fetch] source 5 ok" not in page
    assert "earlier lines in output.log" in page


def test_no_winner() -> None:
    result = make_result(winner=False)
    page, md = report.render_html(result), report.render_markdown(result)
    assert report.NO_WINNER in page and report.NO_WINNER in md
    assert "🏆 Winner" not in page and 'class="badge pass"' not in page


def test_hostile_content_is_escaped() -> None:
    result = hostile_result()
    page = report.render_html(result)
    md = report.render_markdown(result)
    page.encode("utf-8")  # no lone surrogates left
    md.encode("utf-8")
    assert "<script" not in page.lower()
    assert "\x00" not in page and "\x1b" not in page and "\x00" not in md
    for tag, attrs in tags_of(page):
        assert tag in SAFE_TAGS, tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "a":
            assert (attrs.get("href") or "").startswith(("http://", "https://")), attrs
    assert "phish" not in link_texts(page)  # raw HTML never becomes a link
    assert '<a href="http://evil.example/x"' in page  # (a bare URL is shown as itself)
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    # Huge lines are cut, and the page stays a sane size.
    assert "A" * 1001 not in page and "B" * 1001 not in page and len(page) < 400_000
    assert "chars]" in page
    # The fenced artifact in report.md cannot be closed early by the backticks inside it.
    assert "````markdown" in md


def test_html_is_self_contained() -> None:
    page = report.render_html(make_result())
    assert "<style>" in page and "url(" not in page and "@import" not in page
    for tag, attrs in tags_of(page):
        assert tag not in {"script", "img", "iframe", "object", "embed", "link", "source"}
        if tag != "a":
            for name in ("src", "href", "srcset", "action"):
                value = (attrs.get(name) or "").strip().lower()
                assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    assert "default-src 'none'" in page  # even a bug cannot fetch


def test_markdown_to_html_is_safe() -> None:
    out = report.markdown_to_html(
        "## Title\n**b** *i* __u__ ~~s~~ `x<y`\n[ok](https://a.example/?q=1&r=2) "
        "[bad](javascript:alert(1)) <https://b.example/x>\n- one\n- two\n1. first\n"
        "> quoted <b>\n**https://c.example/p**.")
    assert "<h3>Title</h3>" in out
    assert "<strong>b</strong> <em>i</em> <u>u</u> <s>s</s> <code>x&lt;y</code>" in out
    assert '<a href="https://a.example/?q=1&amp;r=2"' in out
    assert "javascript" not in out.split("bad")[0] and 'href="javascript' not in out
    assert '<a href="https://b.example/x"' in out and "&lt;https" not in out
    assert "<ul><li>one</li><li>two</li></ul>" in out and "<ol><li>first</li></ol>" in out
    assert "<blockquote>quoted &lt;b&gt;</blockquote>" in out
    assert '<strong><a href="https://c.example/p"' in out


def test_render_files_include_reports() -> None:
    result = hostile_result()
    for r in result.results:  # (lone surrogates: the report copes, summary.json does not)
        r.artifact_content = r.artifact_content and r.artifact_content.replace("\ud800", "")
    result.winner_artifact = (result.winner_artifact or "").replace("\ud800", "")
    files = render_files(result)
    assert files["report.html"].startswith(b"<!doctype html>")
    assert b"Dream Foundry report" in files["report.md"]


# --------------------------------------------------------------------------- screenshot


def _png_info(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct rows): a blank page has (almost) all rows identical."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", ihdr[:10])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    stride = 1 + width * channels * depth // 8
    raw = zlib.decompress(idat)
    assert len(raw) == stride * height, "pixel data does not match the header"
    rows = {raw[i:i + stride] for i in range(0, len(raw), stride)}
    return width, height, len(rows)


def _screenshot(page: str, name: str, tmp_path: Path) -> Path:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} not found: install it with `apt-get install -y chromium` "
        "(the screenshot test never skips)")
    html_path = tmp_path / f"{name}.html"
    html_path.write_text(page, "utf-8")
    png = tmp_path / f"{name}.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    proc = subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={png}", "--window-size=1280,2000",
         html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium made no screenshot (rc {proc.returncode}):\n{proc.stderr}"
    SCREENSHOTS.mkdir(exist_ok=True)
    shutil.copy(png, SCREENSHOTS / f"{name}.png")
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", html_path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert "Dream Foundry" in dom.stdout, dom.stderr
    return png


@pytest.mark.processes
@pytest.mark.timeout(300)
def test_screenshot_looks_like_a_report(tmp_path: Path) -> None:
    png = _screenshot(report.render_html(make_result()), "report", tmp_path)
    data = png.read_bytes()
    width, height, distinct_rows = _png_info(data)
    assert (width, height) == (1280, 2000)
    assert len(data) > 50_000, "screenshot suspiciously small: blank page?"
    assert distinct_rows > 300, f"only {distinct_rows} distinct pixel rows: blank page?"


@pytest.mark.processes
@pytest.mark.timeout(300)
def test_screenshot_of_hostile_report_renders(tmp_path: Path) -> None:
    png = _screenshot(report.render_html(hostile_result()), "report-hostile", tmp_path)
    width, height, distinct_rows = _png_info(png.read_bytes())
    assert (width, height) == (1280, 2000) and distinct_rows > 100
