"""The dashboard's two figures: server time per page on a big store, and how soon a
candidate finishing shows in an open browser.

1. **Render** (the issue: median <= 100 ms, aim <= 30 ms): 1,000 runs x 20 candidates in
   the store (SQLite, and PostgreSQL with fsync on), each finished run with realistic
   outputs, posts and judge details. The app is called in this process through ASGI, the
   whole request timed (middleware, session, store reads, templates, body) with no HTTP
   client in the way; side by side in every repetition, the store's own read that page
   needs (what ``forge list``/``status`` cost), so the ratio is the dashboard's share.
2. **Live latency** (must <= 1 s, aim <= 300 ms): a real redis-server, a celery worker,
   ``forge web`` and Chromium on a run page; candidates finish staggered. For each, the
   time from the worker's end of the candidate (``finished_at`` in its result) to the
   moment its row's state changed in the page (a MutationObserver, ``Date.now()``: the
   same clock), side by side with a Redis subscriber on the result backend's channel (the
   earliest any client can learn of it).

    .venv/bin/python bench/web.py [--runs 1000] [--candidates 20] [--reps 30]
                                  [--live-candidates 12] [--skip-live] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, median, table, write_json  # noqa: E402, I001

from tests.procs import PostgresServer  # noqa: E402

MUST_MS, AIM_MS = 100.0, 30.0
LIVE_MUST_MS, LIVE_AIM_MS = 1000.0, 300.0


# ---------------------------------------------------------------------------- the store


def big_result(k: int, n: int, rng: random.Random):
    """A finished run of ``n`` candidates that looks like a real one."""
    from worker.records import CandidateInfo, CandidateResult, ForgeResult, Score

    when = datetime(2025, 1, 6, 17, tzinfo=UTC) + timedelta(hours=6 * k)
    ids = [f"agent-{i:02d}" for i in range(n)]
    events = [{"title": f"Event {j}", "date": "2025-01-10", "url": f"https://lu.ma/e{j}",
               "valid": j % 4 != 0, "issues": [] if j % 4 else ["past date"]}
              for j in range(10)]
    results, scores = [], []
    totals = {c: rng.uniform(20, 95) for c in ids}
    order = sorted(ids, key=lambda c: -totals[c])
    for i, c in enumerate(ids):
        ok = rng.random() > 0.1
        post = "\n".join(f"**Event {j}**\n📅 Fri Jan 10 · 6 PM\n📍 Somewhere, SF\n🔗 "
                         f"https://lu.ma/e{j}\n" for j in range(8))
        results.append(CandidateResult(
            candidate_id=c, sandbox_id=f"local-{k}-{i}", success=ok,
            output="".join(f"[{c}] step {j}: fetched source {j}, 12 events\n"
                           for j in range(40)),
            artifact_content=f"# AI events in SF\n\n{post}" if ok else None,
            runtime_seconds=rng.uniform(0.5, 3), exit_code=0 if ok else 1,
            error_message=None if ok else "Script exited with code 1",
            started_at=when.isoformat(timespec="milliseconds"),
            finished_at=(when + timedelta(seconds=2)).isoformat(timespec="milliseconds"),
            worker="w1@host", log=["[Run] Starting...", "[Run] Executing...",
                                   "[Run] Exit code: 0", "[Done] 1.20s"],
            timings={"create": 0.01, "exec": 1.1}))
        scores.append(Score(candidate_id=c, success=100.0 if ok else 0.0,
                            quality_score=totals[c], speed_score=50.0,
                            total_score=totals[c] if ok else 0.0, qualified=ok,
                            gates={"artifact": ok, "events": ok, "dates": True},
                            disqualified_reason=None if ok else "no artifact",
                            quality_details={"events": events, "count": 10,
                                             "checks": {"format": {"valid": True}}},
                            rank=order.index(c) + 1))
    winner = order[0]
    return ForgeResult(
        run_id=f"run-{k:05d}", objective="Generate weekly 'AI Events in San Francisco' "
        "post for Discord", timestamp=when.isoformat(timespec="seconds"),
        execution_mode="local",
        candidates=[CandidateInfo(id=c, name=f"Agent {c[-2:]}", description="a candidate",
                                  script=f"{c}.py", artifact=f"{c}/discord_post.md")
                    for c in ids],
        scores=sorted(scores, key=lambda s: s.rank), winner_id=winner,
        winner_score=totals[winner],
        winner_artifact=next(r.artifact_content for r in results if r.candidate_id == winner),
        artifacts_dir=f"/data/artifacts/run-{k:05d}", results=results,
        competition=("weekly", "nightly", "adhoc")[k % 3] if k % 3 != 2 else None)


def populate(store, runs: int, n: int) -> float:
    rng = random.Random(7)
    t0 = time.perf_counter()
    for k in range(runs):
        store.write_finished(big_result(k, n, rng))
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------- ASGI timing


async def call(app, path: str, query: str = "") -> tuple[int, int]:
    """One GET through the whole app; (status, body bytes)."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
             "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000")], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000), "state": {}}
    status, size = 0, 0

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    await app(scope, receive, send)
    return status, size


def render_bench(url: str, label: str, runs: int, n: int, reps: int, tmp: Path) -> list[list]:
    from dispatcher.web.app import create_app
    from dispatcher.web.settings import WebSettings
    from worker.store import open_store

    store = open_store(url)
    took = populate(store, runs, n)
    if store.backend == "postgresql":  # what autovacuum does to a table that grew
        from sqlalchemy import text

        with store.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    print(f"[{label}] populated {runs} runs x {n} candidates in {took:.1f} s", flush=True)
    live = big_result(runs, n, random.Random(1))
    from worker.records import RunSpec

    spec = RunSpec(run_id="live-run", objective=live.objective,
                   timestamp=datetime.now(UTC).isoformat(), execution_mode="local",
                   artifacts_dir="/data/artifacts", candidates=live.candidates,
                   competition="weekly")
    store.write_queued(spec)
    for c in live.candidates[: n // 2]:
        store.mark_running("live-run", c.id, worker="w1@host")
    app = create_app(WebSettings(artifacts_dir=str(tmp), database_url=url))
    rng = random.Random(3)
    deep = store.list_runs(competition="weekly", per_page=50).pages  # the last page
    pages = {
        "runs list (page 1)": (lambda: ("/runs", ""),
                               lambda: store.list_runs(page=1, per_page=50)),
        f"runs list (page {deep}, one competition)": (
            lambda: ("/runs", f"competition=weekly&page={deep}"),
            lambda: store.list_runs(competition="weekly", page=deep, per_page=50)),
        "run page (finished, 20 candidates)": (
            lambda rid=None: (f"/runs/run-{rng.randrange(runs):05d}", ""), None),
        "run page (live, 20 candidates)": (lambda: ("/runs/live-run", ""),
                                          lambda: store.run_states("live-run")),
        "candidate page (history of 100)": (lambda: ("/candidates/agent-07", ""),
                                            lambda: store.candidate_history("agent-07")),
        "competitions": (lambda: ("/", ""), lambda: store.competitions()),
    }
    rows = []

    async def measure():
        for name, (target, read) in pages.items():
            server, reads, sizes = [], [], []
            for rep in range(reps + 3):
                path, query = target()
                t0 = time.perf_counter()
                status, size = await call(app, path, query)
                dt = time.perf_counter() - t0
                assert status == 200, (name, path, status)
                if read is None:  # the finished run page's own read: that run
                    rid = path.rsplit("/", 1)[1]
                    t1 = time.perf_counter()
                    store.get_run(rid)
                    rt = time.perf_counter() - t1
                else:
                    t1 = time.perf_counter()
                    read()
                    rt = time.perf_counter() - t1
                if rep >= 3:  # warm: templates compiled, connections pooled
                    server.append(dt * 1000)
                    reads.append(rt * 1000)
                    sizes.append(size)
            ms, mr = median(server), median(reads)
            rows.append([label, name, round(mr, 2), round(ms, 2), round(ms / mr, 2),
                         round(ms / MUST_MS, 3), round(ms / AIM_MS, 3),
                         f"{median(sizes) / 1024:.0f} KiB"])
            print(f"[{label}] {name}: server {ms:.2f} ms (store read {mr:.2f} ms)",
                  flush=True)

    asyncio.run(measure())
    return rows


# ---------------------------------------------------------------------------- live


OBSERVER = """() => {
  window.__doneAt = {};
  const mark = () => document.querySelectorAll("tr[id^='cand-']").forEach(tr => {
    const cid = tr.id.slice(5);
    if (tr.dataset.state.startsWith("done") && !(cid in window.__doneAt))
      window.__doneAt[cid] = Date.now();
  });
  new MutationObserver(mark).observe(document.getElementById("run"),
                                     {subtree: true, childList: true, attributes: true});
  mark();
}"""

SLOW = ("import sys, time\ntime.sleep({seconds})\n"
        "open(sys.argv[2], 'w').write('# Done\\n')\n")


def live_bench(n: int, store: str) -> dict:
    from playwright.sync_api import sync_playwright

    from tests.manifests import write_manifest
    from tests.procs import CeleryWorker, RedisServer, forge_env, run_forge_cli
    from tests.web_helpers import WebServer, launch_browser

    tmp = Path(tempfile.mkdtemp(prefix="forge-web-bench-"))
    artifacts = tmp / "artifacts"
    artifacts.mkdir()
    redis = RedisServer(tmp / "redis").start()
    pg = None
    extra = {}
    if store == "postgresql":
        pg = PostgresServer(fsync=True).start()
        extra["FORGE_DATABASE_URL"] = pg.create_database("live")
    env = forge_env(redis.url, artifacts, **extra)
    worker = CeleryWorker(env, "lat", tmp, concurrency=4).start()
    server = WebServer(env, artifacts, tmp).start()
    heard: dict[str, float] = {}
    stop = threading.Event()

    def subscribe() -> None:  # the baseline: the result backend's own notification
        client = redis.client()
        ps = client.pubsub(ignore_subscribe_messages=True)
        ps.psubscribe("celery-task-meta-bench-live:*")
        while not stop.is_set():
            msg = ps.get_message(timeout=0.2)
            if msg is None:
                continue
            meta = json.loads(msg["data"])
            if meta.get("status") == "SUCCESS":
                cid = msg["channel"].decode().rsplit(":", 1)[1]
                heard.setdefault(cid, time.time())
        ps.close()

    listener = threading.Thread(target=subscribe, daemon=True)
    listener.start()
    try:
        # Staggered, 4 at a time: finishes come one by one, some while others start.
        manifest = write_manifest(tmp / "cands", {
            f"c{i:02d}": SLOW.format(seconds=round(1.0 + 0.45 * i, 2)) for i in range(n)})
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page()
            done = run_forge_cli(["run", "--candidates", str(manifest), "--run-id",
                                  "bench-live", "--detach", "--no-post"], env)
            assert done.returncode == 0, done.stderr
            page.goto(f"{server.url}/runs/bench-live")
            page.evaluate(OBSERVER)
            page.wait_for_selector("#leaderboard", timeout=300_000)
            shown = page.evaluate("window.__doneAt")
            browser.close()
        summary = json.loads((artifacts / "bench-live" / "summary.json").read_text())
    finally:
        stop.set()
        listener.join(5)
        server.stop()
        worker.stop()
        redis.stop()
        if pg is not None:
            pg.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    lat_page, lat_redis = [], []
    for r in summary["results"]:
        cid = r["candidate_id"]
        end = datetime.fromisoformat(r["finished_at"]).timestamp()
        if cid in shown:
            lat_page.append(shown[cid] / 1000 - end)
        if cid in heard:
            lat_redis.append(heard[cid] - end)
    missed = n - len(lat_page)
    return {"store": store, "candidates": n, "missed": missed,
            "page_ms": sorted(round(x * 1000, 1) for x in lat_page),
            "backend_ms": sorted(round(x * 1000, 1) for x in lat_redis)}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--live-candidates", type=int, default=12)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    info = machine()
    print(f"bench/web.py on {info['cpus']} CPUs, load {info['loadavg_at_start']}", flush=True)
    out: dict = {"machine": info, "render": [], "live": []}
    tmp = Path(tempfile.mkdtemp(prefix="forge-web-render-", dir=ROOT / "artifacts"))
    pg = None
    try:
        backends = [("sqlite", f"sqlite:///{tmp / 'forge.db'}")]
        if not args.skip_postgres:
            pg = PostgresServer(fsync=True).start()
            backends.append(("postgresql", pg.create_database("bench")))
        for label, url in backends:
            out["render"] += render_bench(url, label, args.runs, args.candidates, args.reps,
                                          tmp)
    finally:
        if pg is not None:
            pg.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    table(f"Server time per page, {args.runs} runs x {args.candidates} candidates "
          f"(median of {args.reps}, ms)",
          ["store", "page", "store read", "whole request", "request/read", "/ must 100",
           "/ aim 30", "body"], out["render"])
    if not args.skip_live:
        rows = []
        for store in ("sqlite", "postgresql"):
            res = live_bench(args.live_candidates, store)
            out["live"].append(res)
            rows.append([store, res["candidates"] - res["missed"],
                         round(median(res["backend_ms"]), 1),
                         round(median(res["page_ms"]), 1), round(pct(res["page_ms"], 0.9), 1),
                         round(max(res["page_ms"] or [float("nan")]), 1),
                         round(median(res["page_ms"]) / LIVE_MUST_MS, 3),
                         round(median(res["page_ms"]) / LIVE_AIM_MS, 3)])
        table("A candidate finishing -> its row changes in an open page (ms after the "
              "worker's end of the candidate)",
              ["store", "candidates seen", "result backend publish (median)",
               "page (median)", "page p90", "page max", "/ must 1000", "/ aim 300"], rows)
    print(f"results: {write_json('web', out)}")


if __name__ == "__main__":
    main()
