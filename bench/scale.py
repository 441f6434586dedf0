"""Scale: one competition of thousands of trivial candidates on Redis.

Measures the dispatch rate (tasks published per second by one ``publish``), the total
time, the chord body's peak memory (its pool process's ru_maxrss, reported by the body)
and every worker process's peak RSS, Redis's ``used_memory_peak``, the dispatcher's
polling cost, and that every result reached disk.

    .venv/bin/python bench/scale.py [--n 5000] [--workers 2 --concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    TRIVIAL,
    Cluster,
    body_timings,
    forge_api,
    machine,
    now,
    table,
    write_json,
)

from tests.manifests import write_manifest  # noqa: E402


def publish_alone(cluster: Cluster, n: int) -> float:
    """Tasks/s of one publish with no worker consuming (the queue is emptied after)."""
    runner, dispatch = forge_api()
    manifest = write_manifest(cluster.tmp / f"pub{n}", {f"c{i:05d}": TRIVIAL for i in range(n)})
    plan = runner.prepare("bench: scale", candidates=str(manifest),
                          artifacts_dir=str(cluster.artifacts), post=False)
    dispatch.check_broker()
    t0 = now()
    dispatch.publish(plan)
    rate = n / (now() - t0)
    client = cluster.redis.client()
    assert client.llen("celery") == n
    client.flushdb()
    return rate


def run(cluster: Cluster, n: int) -> dict:
    runner, dispatch = forge_api()
    from dispatcher.tracker import RunTracker

    manifest = write_manifest(cluster.tmp / f"cands{n}",
                              {f"c{i:05d}": TRIVIAL for i in range(n)})
    polls = {"n": 0, "s": 0.0}
    original = RunTracker.poll

    def timed_poll(self, *a, **kw):
        t = now()
        try:
            return original(self, *a, **kw)
        finally:
            polls["n"] += 1
            polls["s"] += now() - t

    RunTracker.poll = timed_poll
    try:
        t0 = now()
        plan = runner.prepare("bench: scale", candidates=str(manifest),
                              artifacts_dir=str(cluster.artifacts), post=False)
        t_prepared = now()
        dispatch.check_broker()
        dispatch.publish(plan)
        t_published = now()
        # a watcher, as the CLI has: without one the wait reads only the body's state
        result = dispatch.wait(plan, on_tick=lambda _tracker: None)
        wall = now() - t0
    finally:
        RunTracker.poll = original
    bt = body_timings(plan.run.run_id)
    run_dir = cluster.artifacts / plan.run.run_id
    on_disk = sum(1 for p in run_dir.glob("*/result.json")
                  if json.loads(p.read_text()).get("success"))
    info = cluster.redis.client().info("memory")
    return {
        "n": n, "wall_s": wall, "prepare_s": t_prepared - t0,
        "publish_s": t_published - t_prepared,
        "dispatch_per_s": n / (t_published - t_prepared),
        "throughput_per_s": n / wall,
        "successes": sum(r.success for r in result.results),
        "results_on_disk": on_disk,
        "summary_json_mb": (run_dir / "summary.json").stat().st_size / 2**20,
        "body_timings": bt,
        "worker_peak_rss_mb": cluster.worker_rss_mb(),
        "redis_used_memory_peak_mb": info["used_memory_peak"] / 2**20,
        "tracker_polls": polls["n"], "tracker_poll_s": polls["s"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[5000],
                    help="candidate counts, run in order on one cluster (e.g. 5000 10000)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    info = machine()
    runs = []
    with Cluster(args.workers, args.concurrency, start_workers=False) as cluster:
        alone = {n: publish_alone(cluster, n) for n in args.n}
        cluster.redis.client().config_resetstat()
        cluster.redis.client().memory_purge()
        cluster.start_workers()
        for n in args.n:
            if runs:  # a fresh peak per size
                cluster.redis.client().config_resetstat()
                cluster.redis.client().memory_purge()
            t = time.monotonic()
            runs.append({**run(cluster, n), "dispatch_alone_per_s": alone[n]})
            print(f"n={n} done in {time.monotonic() - t:.1f}s", flush=True)
    rows = []
    for r in runs:
        bt = r["body_timings"]
        rows += [
            [f"{r['n']}: dispatch rate, no worker running, tasks/s (target >= 1000)",
             r["dispatch_alone_per_s"]],
            [f"{r['n']}: dispatch rate while 8 slots consume, tasks/s", r["dispatch_per_s"]],
            [f"{r['n']}: publish s", r["publish_s"]],
            [f"{r['n']}: total wall s", r["wall_s"]],
            [f"{r['n']}: throughput candidates/s", r["throughput_per_s"]],
            [f"{r['n']}: callback peak RSS MiB (target <= 512)", bt.get("maxrss_mb", 0.0)],
            [f"{r['n']}: callback score / write s",
             f"{bt.get('score', 0):.2f} / {bt.get('write', 0):.2f}"],
            [f"{r['n']}: max worker process peak RSS MiB",
             max(r["worker_peak_rss_mb"].values())],
            [f"{r['n']}: Redis used_memory_peak MiB", r["redis_used_memory_peak_mb"]],
            [f"{r['n']}: tracker polls / total poll s",
             f"{r['tracker_polls']} / {r['tracker_poll_s']:.2f}"],
            [f"{r['n']}: successful results on disk", f"{r['results_on_disk']} / {r['n']}"],
        ]
    table(f"Scale: {args.workers} workers x {args.concurrency}", ["measure", "value"], rows)
    name = "scale" if args.n == [5000] else "scale_" + "_".join(map(str, args.n))
    print(f"JSON: {write_json(name, {**info, 'runs': runs})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
