"""Parallel speedup: N one-second candidates, sequential seed versus forge on Redis.

Baseline: the seed's loop, one ``subprocess.run([python, script, objective, output])``
per candidate, one after the other. Forge: the full distributed path (Redis, 2 prefork
workers x concurrency 4, bubblewrap sandbox, judge, run directory). Both sides run in
every repetition, interleaved, so they see the same machine load. A second table says
where the forge's time over the ideal goes: the first task's start, what each task adds
to its candidate's sleep (sandbox, interpreter, Celery), and the tail after the last one.

    .venv/bin/python bench/parallel_speedup.py [-n 20] [--seconds 1] [--reps 3] [--warm N]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Cluster,
    body_timings,
    forge_api,
    machine,
    median,
    now,
    run_seed_style,
    table,
    write_json,
)

from tests.manifests import sleepers  # noqa: E402

OBJECTIVE = "bench: parallel speedup"


def baseline(manifest: Path, n: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="forge-seed-"))
    t0 = now()
    for i in range(n):
        done = run_seed_style(str(manifest.parent / f"s{i:03d}.py"), OBJECTIVE,
                              str(out / f"s{i:03d}.md"))
        assert done.returncode == 0, done.stderr
    wall = now() - t0
    shutil.rmtree(out, ignore_errors=True)
    return wall


def forge(manifest: Path, artifacts: Path, n: int, seconds: float) -> tuple[float, dict]:
    """(wall s of one run through the CLI's API, where its time over the candidates' own
    went: the first task's start, each task beyond its candidate's sleep, the tail)."""
    import time

    runner, _ = forge_api()
    t0 = now()
    plan = runner.prepare(OBJECTIVE, candidates=str(manifest), artifacts_dir=str(artifacts),
                          post=False)
    published = time.time()
    result = runner.execute(plan)
    wall = now() - t0
    done = time.time()
    ok = sum(r.success for r in result.results)
    assert ok == n, [r.error_message for r in result.results if not r.success][:3]
    tim = [r.timings for r in result.results]
    body = body_timings(plan.run.run_id)
    last_end = max(t["entered_at"] + t["task"] for t in tim)
    over = sorted(t["task"] - seconds for t in tim)
    return wall, {
        "first_task_s": min(t["entered_at"] for t in tim) - published,
        "task_over_candidate_median_s": median(over), "task_over_candidate_max_s": over[-1],
        "last_task_to_body_s": body.get("entered_at", last_end) - last_end,
        "body_s": body.get("total", 0.0),
        "body_to_result_s": done - body.get("entered_at", last_end) - body.get("total", 0.0),
    }


PARTS = (("first_task_s", "publish -> first task starts"),
         ("task_over_candidate_median_s", "a task beyond its candidate's sleep (median)"),
         ("task_over_candidate_max_s", "a task beyond its candidate's sleep (slowest)"),
         ("last_task_to_body_s", "last task ends -> chord body starts"),
         ("body_s", "chord body (judging, run directory, store)"),
         ("body_to_result_s", "body ends -> the caller has the result"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--warm", type=int, default=None, metavar="N",
                    help="FORGE_WARM_SANDBOXES for the workers (default: the setting's)")
    args = ap.parse_args()
    info = machine()
    extra = {} if args.warm is None else {"FORGE_WARM_SANDBOXES": str(args.warm)}
    with Cluster(args.workers, args.concurrency, extra_env=extra) as cluster:
        manifest = sleepers(cluster.tmp / "cands", args.n, args.seconds)
        ideal = math.ceil(args.n / cluster.slots) * args.seconds
        forge(manifest, cluster.artifacts, args.n, args.seconds)  # warm-up: imports, sandbox
        reps = []
        for _ in range(args.reps):
            seed = baseline(manifest, args.n)
            wall, parts = forge(manifest, cluster.artifacts, args.n, args.seconds)
            reps.append({"baseline_s": seed, "forge_s": wall, "parts": parts})
    base = median([r["baseline_s"] for r in reps])
    wall = median([r["forge_s"] for r in reps])
    data = {
        **info, "n": args.n, "seconds": args.seconds, "slots": args.workers * args.concurrency,
        "workers": args.workers, "concurrency": args.concurrency, "pool": "prefork",
        "warm_sandboxes": args.warm,
        "ideal_s": ideal, "reps": reps, "baseline_s": base, "forge_s": wall,
        "forge_over_ideal": wall / ideal, "speedup": base / wall,
        "target_forge_over_ideal": 1.10, "aim_forge_over_ideal": 1.05,  # issue 17 (was 1.15)
    }
    table(f"Parallel speedup: {args.n} x {args.seconds}s candidates, "
          f"{args.workers} workers x {args.concurrency} (median of {args.reps})",
          ["measure", "value"],
          [["baseline (seed, sequential) s", base], ["forge wall s", wall],
           ["ideal wall s (ceil(N/slots) x t)", ideal],
           ["forge / ideal (must <= 1.10, aim 1.05)", wall / ideal],
           ["speedup over seed", base / wall]])
    waves = math.ceil(args.n / (args.workers * args.concurrency))
    parts = {k: median([r["parts"][k] for r in reps]) for k, _ in PARTS}
    data["parts"] = parts
    table(f"Where forge - ideal ({wall - ideal:.3f} s) goes (medians; {waves} waves of tasks "
          "per slot on the slowest slot)", ["part", "s"],
          [[label, parts[k]] for k, label in PARTS])
    print(f"JSON: {write_json('parallel_speedup', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
