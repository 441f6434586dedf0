"""The dashboard in a real browser (Debian's Chromium through Playwright).

* A distributed run of slow candidates (real redis-server, real celery worker, the
  store on a real PostgreSQL) watched from its page: the page goes from running to
  finished without a reload, then a candidate's history opens. Screenshots go to
  tests/screenshots/ (git-ignored).
* Hostile text in every field a candidate (or its manifest) controls, finished and
  live: no script runs, with the page's Content-Security-Policy and without it (the
  escaping alone); the same payload does run in a page that inserts it unescaped.
"""

from __future__ import annotations

import time

import pytest

from tests.manifests import write_manifest
from tests.procs import ROOT, forge_env, run_forge_cli
from tests.web_helpers import SCREENSHOTS, WebServer, launch_browser

AGENTS = ROOT / "candidates"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


def slow(agent: str, seconds: float) -> str:
    """A demo agent that first takes its time (the sandbox receives this one file)."""
    return (f"import time as _t\n_t.sleep({seconds})\n"
            + (AGENTS / agent).read_text(encoding="utf-8"))


def earlier_runs(store, ids: list[str], n: int = 5) -> None:
    """Past runs of the same candidates, so a history has a line to draw."""
    from tests.store_helpers import finished
    from worker.records import CandidateInfo, RunSpec

    for k in range(n):
        run = RunSpec(run_id=f"past-{k}", objective="Weekly post", execution_mode="local",
                      timestamp=f"2026-10-{k + 1:02d}T17:00:00+00:00", artifacts_dir="/x",
                      competition="weekly",
                      candidates=[CandidateInfo(id=c, name=c.title()) for c in ids])
        store.write_finished(finished(run, winner=ids[k % 2], failed=(ids[-1],)))


OBSERVE = """() => {
  const rows = {};
  document.querySelectorAll("tr[id^='cand-']").forEach(tr => {
    rows[tr.id.slice(5)] = {state: tr.dataset.state,
      log: (tr.querySelector("pre.log") || {}).textContent || "",
      elapsed: (tr.querySelector(".elapsed") || {}).textContent || ""};
  });
  const status = document.getElementById("run-status");
  return {status: status ? status.textContent : null, rows,
          finished: !!document.getElementById("leaderboard"),
          marker: window.__testMarker || null, loadedAt: performance.timeOrigin};
}"""


def test_a_distributed_run_goes_from_running_to_finished_without_a_reload(
        browser, redis_server, workers, artifacts, pg_url, tmp_path):
    from worker.store import open_store

    ids = ["quick", "crasher", "steady", "careful"]
    manifest = write_manifest(tmp_path / "cands", {
        "quick": slow("agent_alpha.py", 2), "crasher": slow("agent_delta.py", 3),
        "steady": slow("agent_gamma.py", 5), "careful": slow("agent_gamma.py", 7)},
        header='judge = "events"\ntimeout = 60')
    store = open_store(pg_url)
    earlier_runs(store, ids)
    env = forge_env(redis_server.url, artifacts, FORGE_DATABASE_URL=pg_url,
                    FORGE_FLOWER_URL="http://127.0.0.1:5555")
    server = WebServer(env, artifacts, tmp_path).start()
    SCREENSHOTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    navigations: list[str] = []
    page.on("framenavigated", lambda f: navigations.append(f.url)
            if f == page.main_frame else None)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id", "web-live",
                              "--detach", "--no-post"], env)
        assert done.returncode == 0, done.stderr
        page.goto(f"{server.url}/runs/web-live")
        page.evaluate("window.__testMarker = 'same page'")
        # The worker comes once the page is open: the run is seen queued, running and
        # finished however slowly this machine started the CLI and the page.
        workers(env, n=1, concurrency=4)
        timeline = []
        shot_live = False
        deadline = time.monotonic() + 120
        while True:
            seen = page.evaluate(OBSERVE)
            timeline.append(seen)
            states = [r["state"] for r in seen["rows"].values()]
            if not shot_live and not seen["finished"] and "running" in states and \
                    any(s.startswith("done") for s in states):
                page.screenshot(path=str(SCREENSHOTS / "web-run-live.png"), full_page=True)
                shot_live = True
            if seen["finished"]:
                break
            assert time.monotonic() < deadline, timeline[-1]
            time.sleep(0.1)
        page.screenshot(path=str(SCREENSHOTS / "web-run-finished.png"), full_page=True)

        first, last = timeline[0], timeline[-1]
        assert first["status"] in ("queued", "running") and not first["finished"]
        assert set(first["rows"]) == set(ids)
        # It moved while the page stayed: candidates finished one after another...
        assert shot_live, [t["rows"] for t in timeline][:40]
        done_counts = [sum(r["state"].startswith("done") for r in t["rows"].values())
                       for t in timeline if not t["finished"]]
        assert len(set(done_counts)) >= 3, done_counts
        assert done_counts == sorted(done_counts)  # never backwards
        final_rows = next(t for t in reversed(timeline) if t["rows"])["rows"]
        assert final_rows["crasher"]["state"] == "done-failed"
        assert final_rows["quick"]["state"] == "done-ok"
        # ...the newest log lines came from the workers' task state (Celery PROGRESS)...
        assert any("[Run] Executing..." in r["log"] for t in timeline
                   for r in t["rows"].values() if r["state"] == "running")
        # ...the elapsed clock ticked in the page...
        ticks = {t["rows"]["careful"]["elapsed"] for t in timeline
                 if t["rows"].get("careful", {}).get("state") == "running"}
        assert len(ticks) >= 3, ticks
        # counted from the task's own start: careful sleeps 7 s before its agent runs
        assert max(int(m) * 60 + int(s) for m, s in (x.split(":") for x in ticks if ":" in x)
                   ) >= 5, ticks
        # ...and the finished page replaced the live one: same document, no reload.
        assert last["finished"] and last["marker"] == "same page"
        assert last["loadedAt"] == first["loadedAt"]
        assert navigations == [f"{server.url}/runs/web-live"], navigations
        assert errors == []
        # Woken by the result backend's task events, not polling (it says so if it must).
        assert "polling instead" not in server.logtext(), server.logtext()[-3000:]
        board = page.inner_text("#leaderboard")
        for cid in ids:
            assert cid in board
        assert page.locator("#run-status").inner_text() == "finished"
        assert page.locator(
            "a[href='http://127.0.0.1:5555/task/web-live:collect']").count() == 1

        # A candidate's history: its runs, its score over time.
        page.click("#leaderboard a[href='/candidates/quick']")
        page.wait_for_selector("#chart svg")
        assert page.url == f"{server.url}/candidates/quick"
        history = page.inner_text("#history")
        assert "web-live" in history and "past-4" in history
        assert page.locator("#chart svg circle").count() == 6
        assert page.locator("#chart svg polyline").count() >= 1
        page.screenshot(path=str(SCREENSHOTS / "web-candidate.png"), full_page=True)
    finally:
        page.close()
        server.stop()


# ---------------------------------------------------------------------------- hostile

# Each part, inserted as HTML, would run script (the positive control proves it).
PAYLOAD = ("<script>window.__pwned='script';document.title='PWNED'</script>"
           "<img src=x onerror=\"window.__pwned='img';document.title='PWNED'\">"
           "<svg onload=\"window.__pwned='svg'\"></svg>"
           "<iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\"></iframe>"
           "\"><script>window.__pwned='attr'</script>"
           "</pre></textarea></title><script>window.__pwned='close'</script>"
           "<a id=jsl href=\"javascript:window.__pwned='href'\">js link</a>")
MARKDOWN = ("[click me](javascript:window.__pwned='md') [data](data:text/html,<script>"
            "window.__pwned='data'</script>) <https://ok.example/a> "
            "**bold <b onmouseover=\"window.__pwned='hover'\">x</b>**")


def hostile_runs(store) -> None:
    from tests.store_helpers import candidate_result, finished
    from worker.records import CandidateInfo, RunSpec

    evil = "evil"
    cands = [CandidateInfo(id=evil, name=f"Evil {PAYLOAD}", description=PAYLOAD,
                           script="evil.py"),
             CandidateInfo(id="plain", name="Plain", description="", script="plain.py")]
    run = RunSpec(run_id="hostile-done", objective=f"Objective {PAYLOAD}",
                  timestamp="2026-11-20T10:00:00+00:00", execution_mode="local",
                  artifacts_dir="/x", candidates=cands, notes=[f"note {PAYLOAD}"],
                  competition="weekly")
    post = f"# Title {PAYLOAD}\n\n{MARKDOWN}\n\n- item {PAYLOAD}\n\n```\n{PAYLOAD}\n```\n"
    results = {
        evil: candidate_result(evil, 0, output=f"out {PAYLOAD}\n" * 3, artifact=post),
        "plain": candidate_result("plain", 1, ok=False, output=PAYLOAD),
    }
    results[evil].warnings = [f"warn {PAYLOAD}"]
    results["plain"].error_message = f"error {PAYLOAD}"
    result = finished(run, winner=evil, failed=("plain",), results=results)
    for s in result.scores:
        s.gates = {f"gate {PAYLOAD}": True, "events": s.candidate_id == evil}
        s.quality_details = {f"key {PAYLOAD}": PAYLOAD, "rows": [{PAYLOAD: PAYLOAD}],
                             "checks": {PAYLOAD: {"valid": False, "details": PAYLOAD}}}
        s.disqualified_reason = None if s.candidate_id == evil else f"reason {PAYLOAD}"
    store.write_queued(run)
    store.write_finished(result)
    live = RunSpec(run_id="hostile-live", objective=f"Live {PAYLOAD}",
                   timestamp="2026-11-21T10:00:00+00:00", execution_mode="local",
                   artifacts_dir="/x", candidates=cands)
    store.write_queued(live)


def progress(redis_url: str, task_id: str, lines: list[str]) -> None:
    """A candidate task's PROGRESS meta, stored as a worker stores it."""
    from celery import Celery

    app = Celery("hostile", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(result_serializer="json", accept_content=["json"])
    app.backend.store_result(task_id, {"candidate_id": task_id.split(":")[1],
                                       "seq": len(lines), "log": lines,
                                       "worker": f"w1@{PAYLOAD}", "attempt": 1}, "PROGRESS")
    app.close()


CHECK = "() => ({pwned: window.__pwned || null, title: document.title})"


def assert_inert(page, where: str) -> None:
    got = page.evaluate(CHECK)
    assert got["pwned"] is None, (where, got)
    assert "PWNED" not in got["title"], (where, got)
    assert page.locator("a[href^='javascript:'], a[href^='data:']").count() == 0, where
    assert page.locator("script:not([src])").count() == 0, where
    assert page.locator("iframe, img[onerror], svg[onload]").count() == 0, where


def test_hostile_artifacts_and_outputs_never_run_script(browser, redis_server, artifacts,
                                                        tmp_path):
    from worker.store import open_store

    store = open_store(f"sqlite:///{artifacts / 'forge.db'}")
    hostile_runs(store)
    progress(redis_server.url, "hostile-live:evil", ["[Run] Starting...", f"line {PAYLOAD}"])
    env = forge_env(redis_server.url, artifacts)
    server = WebServer(env, artifacts, tmp_path).start()
    dialogs: list[str] = []
    pages = ["/runs/hostile-done", "/runs/hostile-live", "/candidates/evil", "/runs", "/",
             "/runs/hostile-done/report.html"]
    try:
        # Positive control: the very payload runs in a page that inserts it unescaped.
        control = browser.new_page()
        control.set_content(f"<html><head><title>control</title></head><body>{PAYLOAD}"
                            "</body></html>")
        control.wait_for_function("() => window.__pwned !== undefined", timeout=10_000)
        assert control.evaluate(CHECK)["pwned"] in ("script", "img", "svg", "attr", "close")
        control.set_content("<html><body></body></html>")  # and inserted by a script
        control.evaluate("(p) => document.body.insertAdjacentHTML('beforeend', p)", PAYLOAD)
        control.wait_for_function("() => window.__pwned !== undefined", timeout=10_000)
        control.close()

        for strip_csp in (False, True):
            context = browser.new_context()
            page = context.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            if strip_csp:  # the escaping alone, without the policy's second line
                def without_csp(route):
                    if route.request.url.endswith("/events"):  # a stream: pass it through
                        route.continue_()
                        return
                    response = route.fetch()
                    headers = {k: v for k, v in response.headers.items()
                               if k.lower() != "content-security-policy"}
                    route.fulfill(response=response, headers=headers)

                page.route(f"{server.url}/**", without_csp)
            for path in pages:
                page.goto(f"{server.url}{path}")
                page.wait_for_load_state("load")
                time.sleep(0.3)  # an onerror or onload would have fired by now
                assert_inert(page, f"{path} (csp {'off' if strip_csp else 'on'})")
            # The text is shown, as text: escaped, not dropped.
            page.goto(f"{server.url}/runs/hostile-done")
            page.click("#c-plain summary")
            body = page.inner_text("body")
            assert "<script>window.__pwned='script';document.title='PWNED'</script>" in body
            assert "error <script>" in body and "reason <script>" in body
            assert "<img src=x onerror=" in page.inner_text("#discord")
            # As Discord shows it: a javascript: or data: link is its label, never a link.
            assert "click me" in page.inner_text("#discord")
            assert "[click me](javascript:window.__pwned='md')" in page.inner_text(
                "#c-evil pre.artifact")
            assert page.locator("#discord a[href='https://ok.example/a']").count() == 1
            if not strip_csp:
                page.screenshot(path=str(SCREENSHOTS / "web-hostile.png"), full_page=True)
            # Live: a hostile log line that arrives after the page loaded (over SSE).
            page.goto(f"{server.url}/runs/hostile-live")
            page.evaluate("window.__testMarker = 1")
            late = f"late {len(dialogs)}{int(strip_csp)} {PAYLOAD}"
            progress(redis_server.url, "hostile-live:evil", ["[Run] Starting...", late])
            page.wait_for_function(
                "(t) => document.getElementById('cand-evil').textContent.includes(t)",
                arg=late[:12], timeout=15_000)
            assert page.evaluate("window.__testMarker") == 1
            time.sleep(0.3)
            assert_inert(page, f"live update (csp {'off' if strip_csp else 'on'})")
            assert late in page.inner_text("#cand-evil")
            context.close()
        assert dialogs == []

        # The policy is the second line: HTML injected into the page anyway (as if the
        # escaping had a hole) cannot run an inline handler or script there.
        page = browser.new_page()
        page.goto(f"{server.url}/runs/hostile-done")
        page.evaluate("(p) => document.body.insertAdjacentHTML('beforeend', p)", PAYLOAD)
        time.sleep(0.5)
        assert page.evaluate(CHECK)["pwned"] is None
        page.close()
    finally:
        server.stop()
