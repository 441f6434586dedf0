"""The dashboard over HTTP (no browser): pages from the store on SQLite and PostgreSQL,
live events, 404/500/503 pages, and the rules of the token, the session and CSRF.

The app runs in-process (Starlette's TestClient) against a real store; what needs the
real CLI (binding rules) or a real broker (starting a competition) runs ``forge web``.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.manifests import write_manifest
from tests.procs import forge_env, free_port, run_forge_cli
from tests.store_helpers import candidate_result, finished, spec
from tests.web_helpers import TOKEN, WebServer, write_forge_toml
from worker.records import sha256_text

BASE = "http://127.0.0.1:8000"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@dataclass
class Site:
    store: object
    settings: object
    client: TestClient
    tmp: Path


def _populate(store) -> None:
    """Three finished runs of "weekly" (winners c1, c0, c1), one live run, one failed."""
    for i, winner in enumerate(("c1", "c0", "c1")):
        run = spec(f"wk-{i}", n=3, competition="weekly",
                   timestamp=f"2026-11-{10 + i:02d}T17:00:00+00:00")
        store.write_queued(run)
        store.write_finished(finished(run, winner=winner, failed=("c2",)))
    live = spec("live-1", n=3, competition="weekly", timestamp="2026-11-20T17:00:00+00:00")
    store.write_queued(live)
    store.mark_running("live-1", "c0", worker="w1@host")
    store.mark_done("live-1", candidate_result("c1", 1))
    bad = spec("bad-1", n=2, timestamp="2026-11-05T17:00:00+00:00")
    store.write_queued(bad)
    store.mark_failed("bad-1", "the run's callback failed: RuntimeError: boom")


def _site(url: str, tmp_path: Path, **settings_kw) -> Site:
    from dispatcher.web.app import create_app
    from dispatcher.web.settings import WebSettings
    from worker.store import open_store

    store = open_store(url)
    _populate(store)
    manifest = write_manifest(tmp_path / "cands", {"c0": "print(1)\n"})
    settings = WebSettings(artifacts_dir=str(tmp_path / "artifacts"), database_url=url,
                           competitions=str(write_forge_toml(tmp_path, manifest)),
                           poll_interval=0.1, **settings_kw)
    client = TestClient(create_app(settings), base_url=BASE, raise_server_exceptions=False,
                        follow_redirects=False)
    return Site(store, settings, client, tmp_path)


@pytest.fixture
def site(store_url, tmp_path):
    """The dashboard on a populated store, on SQLite and on PostgreSQL."""
    from worker.store.db import dispose_all

    s = _site(store_url, tmp_path)
    with s.client:
        yield s
    dispose_all()


@pytest.fixture
def lite(tmp_path):
    """The same on SQLite only (rules that do not depend on the database)."""
    from worker.store.db import dispose_all

    s = _site(f"sqlite:///{tmp_path / 'artifacts' / 'forge.db'}", tmp_path,
              flower_url="http://flower.local:5555")
    with s.client:
        yield s
    dispose_all()


@pytest.fixture
def guarded(tmp_path):
    """The dashboard with FORGE_WEB_TOKEN (actions on after signing in)."""
    from worker.store.db import dispose_all

    s = _site(f"sqlite:///{tmp_path / 'artifacts' / 'forge.db'}", tmp_path, token=TOKEN)
    with s.client:
        yield s
    dispose_all()


def text(html: str) -> str:
    """The page's visible text, roughly (tags out, entities as written)."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# ---------------------------------------------------------------------------- pages


def test_competitions_page_shows_schedule_next_run_and_last_winner(site):
    r = site.client.get("/")
    assert r.status_code == 200
    page = text(r.text)
    assert "weekly" in page and "0 9 * * 1 (America/Los_Angeles)" in page
    # The next Monday 09:00 in Los Angeles, from Celery's crontab (dispatcher.competitions).
    assert re.search(r"Mon \d{4}-\d\d-\d\d 09:00 P[SD]T", page), page
    row = re.search(r'<tr id="comp-weekly">(.*?)</tr>', r.text, re.S).group(1)
    # The newest finished run of weekly is wk-2, won by c1; live-1 is the newest run.
    assert 'href="/candidates/c1"' in row and 'href="/runs/wk-2"' in row
    assert 'href="/runs/live-1"' in row and ">4<" in row  # runs of weekly
    assert "disabled" in text(re.search(r'<tr id="comp-nightly">(.*?)</tr>', r.text,
                                        re.S).group(1))
    assert "Start now" not in r.text  # no token: no actions


def test_runs_list_filters_by_competition_and_status_and_pages(site):
    r = site.client.get("/runs")
    assert r.status_code == 200
    ids = re.findall(r'href="/runs/([^"/]+)" class="mono"', r.text)
    assert ids == ["live-1", "wk-2", "wk-1", "wk-0", "bad-1"]  # newest first
    r = site.client.get("/runs?competition=weekly&status=finished")
    assert re.findall(r'href="/runs/([^"/]+)" class="mono"', r.text) == ["wk-2", "wk-1", "wk-0"]
    for i in range(60):  # two pages of 50
        site.store.write_queued(spec(f"extra-{i:02d}", n=1, competition="weekly",
                                     timestamp=f"2025-01-01T00:{i:02d}:00+00:00"))
    first = site.client.get("/runs?competition=weekly")
    second = site.client.get("/runs?competition=weekly&page=2")
    assert "page 1 of 2 · 64 run(s)" in text(first.text)
    one = re.findall(r'href="/runs/([^"/]+)" class="mono"', first.text)
    two = re.findall(r'href="/runs/([^"/]+)" class="mono"', second.text)
    assert len(one) == 50 and len(two) == 14 and not set(one) & set(two)
    assert two[-1] == "extra-00"
    assert 'href="/runs?competition=weekly&amp;page=2" rel="next"' in first.text
    for bad in ("page=3", "page=0", "page=x", "status=done", "competition=No%20Such!"):
        assert site.client.get(f"/runs?competition=weekly&{bad}").status_code == 404, bad


def test_finished_run_page_shows_leaderboard_gates_breakdown_post_and_every_output(site):
    r = site.client.get("/runs/wk-0")
    assert r.status_code == 200
    page = r.text
    assert 'data-live' not in page  # finished: no live stream
    board = re.search(r'<section id="leaderboard">(.*?)</section>', page, re.S).group(1)
    # Rank order, with each candidate's gates and score breakdown.
    assert [m for m in re.findall(r'href="/candidates/(c\d)"', board)] == ["c1", "c0", "c2"]
    assert "✓ artifact" in board and "✗ artifact" in board and "gate events" in board
    assert "80.0" in board and "90.0" in board and "PASS" in board and "FAIL" in board
    # The winner's post as Discord shows it: the announcement, its markdown rendered.
    discord = re.search(r'<div class="discord" id="discord">(.*?)</div>\s*<p', page,
                        re.S).group(1)
    assert "<strong>Cand 1 (the 1th)</strong> wins with 80.0/100" in discord
    assert "<h2>Post by c1</h2>" in discord
    # Every candidate's artifact and output (c2 failed: no artifact).
    for cid in ("c0", "c1"):
        section = re.search(rf'<details class="card cand-d" id="c-{cid}"(.*?)</details>', page,
                            re.S).group(1)
        assert f"# Post by {cid}" in section and f"[{cid}] line one" in section
        assert f"c{cid[1]}.py · sha256 {sha256_text(f'{cid}.py')}" in section  # its code
        assert f'/runs/wk-0/candidates/{cid}/artifact.md' in section
    assert "Script exited with code 1" in page
    art = site.client.get("/runs/wk-0/candidates/c1/artifact.md")
    assert art.status_code == 200 and art.text == "# Post by c1\n"
    assert art.headers["content-type"].startswith("text/plain")
    assert art.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert site.client.get("/runs/wk-0/candidates/c2/output.log").text.startswith("[c2]")
    assert site.client.get("/runs/wk-0/candidates/c2/artifact.md").status_code == 404
    assert site.client.get("/runs/wk-0/report.md").text == site.store.report("wk-0", "md")
    assert json.loads(site.client.get("/runs/wk-0/summary.json").text)["winner_id"] == "c1"


def test_a_failed_run_says_why(site):
    r = site.client.get("/runs/bad-1")
    assert r.status_code == 200
    assert "The run failed: the run&#39;s callback failed: RuntimeError: boom" in r.text


def test_live_run_page_and_its_events_follow_the_store(site):
    """Embedded mode (no broker): the store's states, pushed as each one changes."""
    r = site.client.get("/runs/live-1")
    assert r.status_code == 200
    assert 'data-live="/runs/live-1/events"' in r.text
    rows = dict(re.findall(r'<tr id="cand-(c\d)" class="[^"]*" data-state="([^"]+)"', r.text))
    assert rows == {"c0": "running", "c1": "done-ok", "c2": "queued"}
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in r.text

    events: queue.Queue = queue.Queue()

    def read() -> None:
        with site.client.stream("GET", "/runs/live-1/events") as resp:
            events.put(("status", resp.status_code, resp.headers["content-type"]))
            name = None
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.put((name, json.loads(line[6:])))
                    if name == "final":
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def until(pred, what: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            item = events.get(timeout=max(0.01, deadline - time.monotonic()))
            if pred(item):
                return item
            assert time.monotonic() < deadline, what

    status = events.get(timeout=30)
    assert status[1:] == (200, "text/event-stream; charset=utf-8")
    # First the whole current state...
    until(lambda e: e[0] == "cand" and e[1]["id"] == "c2" and 'data-state="queued"'
          in e[1]["html"], "the initial rows")
    # ...then each change: c2 starts, c0 finishes, then the run does.
    site.store.mark_running("live-1", "c2", worker="w2@host")
    until(lambda e: e[0] == "cand" and e[1]["id"] == "c2" and 'data-state="running"'
          in e[1]["html"] and "w2@host" in e[1]["html"], "c2 running")
    site.store.mark_done("live-1", candidate_result("c0", 0, ok=False))
    until(lambda e: e[0] == "cand" and e[1]["id"] == "c0"
          and 'data-state="done-failed"' in e[1]["html"], "c0 failed")
    site.store.write_finished(finished(spec("live-1", n=3, competition="weekly",
                                            timestamp="2026-11-20T17:00:00+00:00"),
                                       winner="c1", failed=("c0",)))
    until(lambda e: e[0] == "final", "the final event")
    reader.join(10)
    assert not reader.is_alive()
    body = site.client.get("/runs/live-1/body")  # what the page swaps in
    assert body.status_code == 200 and '<section id="leaderboard">' in body.text
    assert "<html" not in body.text


def test_candidate_page_has_its_history_and_an_inline_svg_chart(site):
    r = site.client.get("/candidates/c1")
    assert r.status_code == 200
    runs = re.findall(r'href="/runs/([^"#]+)#c-c1"', r.text)
    assert runs == ["live-1", "wk-2", "wk-1", "wk-0", "bad-1"]
    svg = re.search(r"<svg .*?</svg>", r.text, re.S).group(0)
    assert 'viewBox="0 0 640 180"' in svg
    assert svg.count('class="pt won"') == 2  # won wk-0 and wk-2
    assert svg.count("<circle") == 5 and "<polyline" in svg
    assert svg.count('class="pt none"') == 2  # live-1 and bad-1 have no score
    assert "href=" not in svg and "<script" not in svg and "http" not in svg.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "Wins 2" in text(r.text)
    only = site.client.get("/candidates/c1?competition=weekly")
    assert only.status_code == 200 and "all competitions" in only.text
    assert site.client.get("/candidates/c1?competition=nightly").status_code == 404


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("path", [
    "/runs/nope", "/runs/%2e%2e", "/runs/.hidden", "/runs/a%00b", "/runs/%2e%2e%2fetc",
    "/runs/" + "x" * 129, "/runs/nope/body", "/runs/nope/events", "/runs/nope/report.html",
    "/runs/wk-0/whatever", "/runs/wk-0/candidates/C0/artifact.md",
    "/runs/wk-0/candidates/c9/output.log", "/runs/..%2f..%2fetc%2fpasswd/summary.json",
    "/candidates/UPPER", "/candidates/nobody", "/candidates/a%2fb", "/no/such/page",
    "/runs/live-1/report.html",
])
def test_a_bad_or_unknown_id_is_a_404_page(lite, path):
    r = lite.client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert r.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in r.text
    assert "Traceback" not in r.text and "File \"" not in r.text


def test_an_internal_error_is_a_500_page_without_details_and_is_logged(lite, caplog):
    from sqlalchemy import text as sql

    with lite.store.engine.begin() as conn:  # a row the reader cannot decode
        conn.execute(sql("UPDATE candidates SET quality_details = 'not json {' "
                         "WHERE run_id = 'wk-1'"))
    with caplog.at_level("ERROR", logger="dream_foundry.web"):
        r = lite.client.get("/runs/wk-1")
    assert r.status_code == 500
    assert "Something went wrong on the server; it has been logged." in r.text
    assert "JSONDecodeError" not in r.text and "Traceback" not in r.text
    assert "not json" not in r.text
    assert any("GET /runs/wk-1 failed" in rec.getMessage() for rec in caplog.records)
    assert lite.client.get("/runs/wk-0").status_code == 200  # the rest still works


def test_an_unreachable_store_is_a_503_page_without_its_password(tmp_path):
    from dispatcher.web.app import create_app
    from dispatcher.web.settings import WebSettings

    url = f"postgresql+psycopg://forge:hunter2-secret@127.0.0.1:{free_port()}/forge"
    settings = WebSettings(artifacts_dir=str(tmp_path), database_url=url)
    with TestClient(create_app(settings), base_url=BASE,
                    raise_server_exceptions=False) as client:
        r = client.get("/runs")
    assert r.status_code == 503
    assert "forge:***@127.0.0.1" in r.text and "hunter2" not in r.text
    assert "Traceback" not in r.text


# ---------------------------------------------------------------------------- security


def test_every_page_has_the_security_headers(lite):
    for path in ("/", "/runs", "/runs/wk-0", "/runs/live-1", "/candidates/c0", "/runs/nope",
                 "/static/live.js"):
        r = lite.client.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "same-origin"
    report = lite.client.get("/runs/wk-0/report.html")  # the report's own inline CSS only
    assert report.headers["content-security-policy"] == \
        "default-src 'none'; style-src 'unsafe-inline'; sandbox"


def test_flower_links_name_each_candidates_task_and_the_collect_task(lite):
    page = lite.client.get("/runs/wk-0").text
    for tid in ("wk-0:c0", "wk-0:c1", "wk-0:c2", "wk-0:collect"):
        assert f'href="http://flower.local:5555/task/{tid}"' in page, tid
    live = lite.client.get("/runs/live-1").text
    assert 'href="http://flower.local:5555/task/live-1:c2"' in live


def test_without_a_token_only_loopback_names_are_served(lite):
    assert lite.client.get("/", headers={"host": "localhost:8000"}).status_code == 200
    assert lite.client.get("/", headers={"host": "[::1]:8000"}).status_code == 200
    for host in ("evil.example", "evil.example:8000", "10.1.2.3:8000", "127.0.0.1.evil.io"):
        r = lite.client.get("/", headers={"host": host})
        assert r.status_code == 421, host  # a DNS-rebinding page cannot read it
        assert "FORGE_WEB_TOKEN" in r.text


def test_without_a_token_the_actions_are_off(lite):
    for path in ("/", "/runs/wk-0"):
        page = lite.client.get(path).text
        assert "Start now" not in page and "/repost" not in page and "csrf" not in page
        assert "read-only" in page
    for path in ("/competitions/weekly/start", "/runs/wk-0/repost", "/login"):
        r = lite.client.post(path, data={"csrf": "x", "token": "x"})
        assert r.status_code == 403, path
    assert "FORGE_WEB_TOKEN" in lite.client.post("/runs/wk-0/repost").text


def _sign_in(client: TestClient, token: str = TOKEN, **headers) -> str:
    r = client.post("/login", data={"token": token, "next": "/runs/wk-0"},
                    headers={"origin": BASE, **headers})
    assert r.status_code == 303, r.text
    page = client.get("/runs/wk-0").text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_with_a_token_every_page_needs_a_session(guarded):
    c = guarded.client
    r = c.get("/runs/wk-0?x=1")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fruns%2Fwk-0%3Fx%3D1"
    assert c.get("/runs/wk-0/events").status_code == 401
    assert c.get("/login").status_code == 200 and c.get("/healthz").text == "ok"
    assert c.get("/static/app.css").status_code == 200
    # Any Host is served with a token (a proxy's name), the session guards it.
    assert c.get("/login", headers={"host": "forge.example"}).status_code == 200
    t0 = time.monotonic()
    wrong = c.post("/login", data={"token": TOKEN[:-1] + "X"}, headers={"origin": BASE})
    assert wrong.status_code == 401 and time.monotonic() - t0 >= 0.9
    assert "set-cookie" not in wrong.headers
    right = c.post("/login", data={"token": TOKEN, "next": "/runs/wk-0"},
                   headers={"origin": BASE})
    assert right.status_code == 303 and right.headers["location"] == "/runs/wk-0"
    cookie = right.headers["set-cookie"].lower()
    assert cookie.startswith("forge_session=") and "httponly" in cookie
    assert "samesite=strict" in cookie and "path=/" in cookie
    page = c.get("/runs/wk-0")
    assert page.status_code == 200 and "Re-post the winner" in page.text
    assert TOKEN not in page.text and TOKEN not in right.headers["set-cookie"]
    assert "Start now" in c.get("/").text


def test_sign_in_goes_back_only_to_a_page_of_this_site(guarded):
    for target, expected in (("/runs", "/runs"), ("//evil.example/x", "/"),
                             ("https://evil.example/", "/"), ("/\\evil.example", "/"),
                             ("runs", "/")):
        guarded.client.cookies.clear()
        r = guarded.client.post("/login", data={"token": TOKEN, "next": target},
                                headers={"origin": BASE})
        assert r.headers["location"] == expected, target


def test_an_action_needs_the_session_its_form_token_and_the_same_origin(guarded, monkeypatch):
    from tests.discord_server import DiscordServer

    c = guarded.client
    assert c.post("/runs/wk-0/repost", data={"csrf": "x"}).status_code == 401  # no session
    csrf = _sign_in(c)
    with DiscordServer() as discord:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", discord.url)
        refused = [
            c.post("/runs/wk-0/repost", data={}),  # no form token
            c.post("/runs/wk-0/repost", data={"csrf": csrf[:-2] + "xx"}),  # a wrong one
            c.post("/runs/wk-0/repost", data={"csrf": csrf},
                   headers={"origin": "https://evil.example"}),  # another site's page
            c.post("/runs/wk-0/repost", data={"csrf": csrf},
                   headers={"referer": "https://evil.example/page"}),
            c.post("/runs/wk-0/repost", data={"csrf": csrf},
                   headers={"sec-fetch-site": "cross-site"}),
            c.post("/runs/wk-0/repost", data={"csrf": csrf}, headers={"origin": "null"}),
        ]
        assert [r.status_code for r in refused] == [403] * 6
        assert discord.requests == []
        # Another session's form token is no good in this one.
        other = TestClient(c.app, base_url=BASE, follow_redirects=False)
        other_csrf = _sign_in(other)
        assert other_csrf != csrf
        assert c.post("/runs/wk-0/repost", data={"csrf": other_csrf},
                      headers={"origin": BASE}).status_code == 403
        # The positive control: the same POST with everything right posts the winner.
        ok = c.post("/runs/wk-0/repost", data={"csrf": csrf}, headers={
            "origin": BASE, "sec-fetch-site": "same-origin"})
        assert ok.status_code == 200, ok.text
        assert "Posted" in ok.text and len(discord.delivered) >= 1
        assert "Cand 1" in discord.delivered[0] and "wins with 80.0/100" in discord.delivered[0]
    record = guarded.store.get_run("wk-0").discord
    assert record["posted"] is True and record["forced"] is True
    assert discord.url not in json.dumps(record)
    assert "Posted to Discord" in c.get("/runs/wk-0").text
    # Signing out ends the session: the same form token is refused afterwards.
    assert c.post("/logout", data={"csrf": csrf}, headers={"origin": BASE}).status_code == 303
    assert c.post("/runs/wk-0/repost", data={"csrf": csrf},
                  headers={"origin": BASE}).status_code == 401


def test_start_now_without_a_broker_says_what_it_needs(guarded):
    c = guarded.client
    csrf = _sign_in(c)
    page = c.get("/").text
    assert re.search(r'<button type="submit" disabled title="needs a broker', page)
    r = c.post("/competitions/weekly/start", data={"csrf": csrf}, headers={"origin": BASE})
    assert r.status_code == 409
    assert "needs a broker: set CELERY_BROKER_URL" in r.text
    assert c.post("/competitions/nosuch/start", data={"csrf": csrf},
                  headers={"origin": BASE}).status_code == 404


# ---------------------------------------------------------------------------- forge web


@pytest.mark.processes
def test_forge_web_refuses_another_address_without_a_token(tmp_path):
    env = forge_env(None, tmp_path)
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):
        done = run_forge_cli(["web", "--host", host, "--port", str(free_port())], env,
                             timeout=60)
        assert done.returncode == 2, (host, done.stderr)
        assert "refusing to bind the dashboard to" in done.stderr
        assert "Set FORGE_WEB_TOKEN" in done.stderr and "127.0.0.1" in done.stderr
        assert "Traceback" not in done.stderr
    short = run_forge_cli(["web", "--host", "0.0.0.0"], {**env, "FORGE_WEB_TOKEN": "short"},
                          timeout=60)
    assert short.returncode == 2 and "at least 16" in short.stderr
    flower = run_forge_cli(["web"], {**env, "FORGE_FLOWER_URL": "javascript:alert(1)"},
                           timeout=60)
    assert flower.returncode == 2 and "FORGE_FLOWER_URL" in flower.stderr
    off = run_forge_cli(["web"], {**env, "FORGE_STORE": "off"}, timeout=60)
    assert off.returncode == 2 and "FORGE_STORE" in off.stderr


@pytest.mark.processes
def test_forge_web_binds_another_address_with_a_token(tmp_path):
    """The positive control of the refusal: with a token the same bind serves."""
    import urllib.request

    env = forge_env(None, tmp_path, FORGE_WEB_TOKEN=TOKEN)
    server = WebServer(env, tmp_path, tmp_path, host="0.0.0.0").start()
    try:
        with urllib.request.urlopen(f"{server.url}/login", timeout=10) as r:
            assert r.status == 200 and b"Sign in" in r.read()
        assert "http://0.0.0.0:" in server.logtext() and "actions on" in server.logtext()
        assert TOKEN not in server.logtext()
    finally:
        server.stop()


def test_start_now_publishes_the_competition_on_the_cluster(
        redis_server, workers, artifacts, pg_url, tmp_path):
    """Signed in, the button's POST publishes start_competition(name, "now"); a real
    worker claims the slot and runs it; the page opens the new run."""
    import httpx

    manifest = write_manifest(tmp_path / "cands", {"c0": "print('hi')\n"})
    toml = write_forge_toml(tmp_path, manifest)
    env = forge_env(redis_server.url, artifacts, FORGE_DATABASE_URL=pg_url,
                    FORGE_COMPETITIONS=str(toml), FORGE_WEB_TOKEN=TOKEN)
    workers(env, n=1, concurrency=2)
    server = WebServer(env, artifacts, tmp_path).start()
    try:
        with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as c:
            assert c.post("/login", data={"token": TOKEN},
                          headers={"origin": server.url}).status_code == 303
            page = c.get("/").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
            assert re.search(r'<button type="submit" >Start now</button>', page)
            r = c.post("/competitions/weekly/start", data={"csrf": csrf},
                       headers={"origin": server.url})
            assert r.status_code == 303, r.text
            run_id = r.headers["location"].rsplit("/", 1)[1]
            assert re.fullmatch(r"weekly-\d{8}-\d{6}", run_id)
            deadline = time.monotonic() + 90
            while "Leaderboard" not in (body := c.get(f"/runs/{run_id}").text):
                assert time.monotonic() < deadline, body[-2000:]
                time.sleep(0.3)
            assert "Competition <b><a href=\"/runs?competition=weekly\">weekly</a>" in body
    finally:
        server.stop()
