"""Daytona at account scale: N candidates on an account that allows Q sandboxes at once.

Against the loopback Daytona emulator (a subprocess: every create takes 0.3 s, the
organisation's vCPU quota is Q, so a create past Q sandboxes is refused with 403 as on
the real service), with the real SDK, ``--workers`` (2) ``celery worker -P threads -c C``
processes sharing one budget through a private redis-server (C x workers > Q: candidates
wait in the sandbox budget, not in the broker):

* ``budget = account``: FORGE_DAYTONA_MAX_SANDBOXES = Q, the configuration the issue
  asks for. Measured: wall time (dispatch to summary) against the ideal, N / Q waves of
  (create + work), and the share of creates the account refused.
* ``budget above the account``: max_sandboxes 10 x Q, i.e. a budget set too high. The
  run must learn the account's limit from its refusals; side by side, the price of that.

A warm-up run first (SDK import and client in the worker), then ``--reps`` runs of each,
alternating. Prints a table; writes JSON to bench/results/daytona_quota.json.

    .venv/bin/python bench/daytona_quota.py [-n 200] [--quota 20] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import forge_api, machine, median, now, parse_ts, table, write_json  # noqa: E402,I001
from daytona_concurrency import SDK_ENV, DaytonaCluster, Emulator  # noqa: E402

from tests.manifests import sleepers  # noqa: E402

OBJECTIVE = "bench: daytona quota"
PHASES = ("create", "upload", "exec", "collect", "delete")  # the lifecycle's, under the lease


def forge_run(manifest: Path, artifacts: Path, n: int, emu: Emulator,
              max_sandboxes: int | None) -> dict:
    runner, _ = forge_api()
    emu.counters(reset=True)
    t0 = now()
    plan = runner.prepare(OBJECTIVE, True, candidates=str(manifest),
                          artifacts_dir=str(artifacts), post=False, max_sandboxes=max_sandboxes)
    assert plan.run.execution_mode == "daytona", plan.run.notes
    result = runner.execute(plan)
    wall = now() - t0
    counters = emu.counters()
    bad = [r.error_message for r in result.results if not r.success]
    assert not bad and len(result.results) == n, bad[:3]
    assert result.sandboxes_alive == 0, result.sandboxes_alive
    refused = len(counters["refused"])
    attempts = counters["created"] + refused
    starts = [parse_ts(r.started_at) for r in result.results]
    ends = [parse_ts(r.finished_at) for r in result.results]
    waits = sorted(r.timings.get("slot_wait", 0.0) for r in result.results)
    # Where a slot's time goes, per candidate (the ideal: 0.3 create + 1 work, nothing else)
    phases = {p: median([r.timings.get(p, 0.0) for r in result.results]) for p in PHASES}
    return {"wall_s": wall, "first_start_to_last_finish_s": max(ends) - min(starts),
            "creates": attempts, "refused": refused,
            "refused_share": refused / attempts if attempts else 0.0,
            "peak_alive": counters["peak_alive"],
            "slot_wait_median_s": median(waits), "slot_wait_max_s": waits[-1],
            "phases_median_s": phases,
            "learned": sum(any("The account refused a sandbox while" in x for x in r.log)
                           for r in result.results)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--quota", type=int, default=20, help="sandboxes the account allows")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--create-latency", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, default=None,
                    help="threads per worker (default: 1.2 x quota / workers: a few "
                         "candidates wait in the budget, ready for the next free slot)")
    ap.add_argument("--workers", type=int, default=2,
                    help="worker processes sharing the budget (default 2: at 20 sandboxes "
                         "one process's GIL is the bottleneck on 2 cores)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-overshoot", action="store_true",
                    help="skip the budget-above-the-account runs")
    args = ap.parse_args()
    concurrency = args.concurrency or -(-6 * args.quota // (5 * args.workers))
    info = machine()
    key = f"bench-key-{secrets.token_hex(8)}"
    waves = -(-args.n // args.quota)
    ideal = waves * (args.create_latency + args.seconds)
    configs = {"budget = account": args.quota}
    if not args.no_overshoot:
        configs["budget above the account"] = 10 * args.quota
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    with Emulator(key, args.create_latency, quota_cpu=args.quota) as emu:
        extra = {"DAYTONA_API_KEY": key, "DAYTONA_API_URL": emu.url, **SDK_ENV,
                 "FORGE_DAYTONA_MAX_SANDBOXES": str(args.quota)}
        with DaytonaCluster(concurrency, extra, args.workers) as cluster:
            manifest = sleepers(cluster.tmp / "cands", args.n, args.seconds)
            t0 = now()
            warm = forge_run(manifest, cluster.artifacts, args.n, emu, args.quota)
            warm["cold_wall_s"] = now() - t0
            for _ in range(args.reps):
                for name, budget in configs.items():
                    runs[name].append(forge_run(manifest, cluster.artifacts, args.n, emu,
                                                budget))
            state = emu.counters()
            for k in ("DAYTONA_API_KEY", "DAYTONA_API_URL", "FORGE_DAYTONA_MAX_SANDBOXES"):
                os.environ.pop(k, None)
    summary = {}
    for name, reps in runs.items():
        wall = median([r["wall_s"] for r in reps])
        summary[name] = {"wall_s": wall, "ratio_to_ideal": wall / ideal,
                         "span_s": median([r["first_start_to_last_finish_s"] for r in reps]),
                         "refused_share": median([r["refused_share"] for r in reps]),
                         "refused": median([r["refused"] for r in reps]),
                         "creates": median([r["creates"] for r in reps]),
                         "peak_alive": max(r["peak_alive"] for r in reps),
                         "slot_wait_median_s": median([r["slot_wait_median_s"] for r in reps]),
                         "phases_median_s": {p: median([r["phases_median_s"][p] for r in reps])
                                             for p in PHASES}}
    main_ = summary["budget = account"]
    data = {**info, "n": args.n, "quota": args.quota, "seconds": args.seconds,
            "create_latency_s": args.create_latency, "pool": "threads",
            "concurrency": concurrency, "ideal_s": ideal, "warmup": warm, "runs": runs,
            "summary": summary, "must": {"ratio": 1.2, "refused_share": 0.05},
            "aim": {"ratio": 1.1, "refused_share": 0.0},
            "meets_must": main_["ratio_to_ideal"] <= 1.2 and main_["refused_share"] <= 0.05,
            "meets_aim": main_["ratio_to_ideal"] <= 1.1 and main_["refused_share"] == 0,
            "alive_at_end": state["alive"]}
    rows = [[f"ideal s: {waves} waves x ({args.create_latency:g} create + {args.seconds:g} "
             "work)", ideal, ""]]
    for name, s in summary.items():
        rows += [[f"{name}: wall s, dispatch to summary", s["wall_s"], ""],
                 [f"{name}: wall / ideal (must <= 1.2, aim <= 1.1)", s["ratio_to_ideal"], ""],
                 [f"{name}: first start to last finish s", s["span_s"], ""],
                 [f"{name}: refused creates / creates (must <= 5%, aim 0)",
                  f"{100 * s['refused_share']:.1f}%", f"{s['refused']:g} of {s['creates']:g}"],
                 [f"{name}: peak sandboxes alive (account allows {args.quota})",
                  s["peak_alive"], ""],
                 [f"{name}: median wait for a slot s", s["slot_wait_median_s"], ""],
                 [f"{name}: per candidate s, median: " + " / ".join(PHASES),
                  sum(s["phases_median_s"].values()),
                  " / ".join(f"{s['phases_median_s'][p]:.3f}" for p in PHASES)]]
    rows.append(["cold run s (first run: SDK import in the worker)", warm["cold_wall_s"], ""])
    rows.append(["sandboxes alive at the end", state["alive"], ""])
    table(f"Daytona quota: {args.n} x {args.seconds:g}s candidates, create {args.create_latency:g}"
          f"s, account allows {args.quota}, {args.workers} worker(s) -P threads -c {concurrency} "
          f"(median of {args.reps}; load at start {info['loadavg_at_start']})",
          ["measure", "value", "detail"], rows)
    print(f"JSON: {write_json('daytona_quota', data)}")
    return 0 if data["meets_must"] else 1


if __name__ == "__main__":
    sys.exit(main())
