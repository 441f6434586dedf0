"""Parallel speedup: N one-second candidates, sequential seed versus forge on Redis.

Baseline: the seed's loop, one ``subprocess.run([python, script, objective, output])``
per candidate, one after the other. Forge: the full distributed path (Redis, 2 prefork
workers x concurrency 4, bubblewrap sandbox, judge, run directory). Both sides run in
every repetition, interleaved, so they see the same machine load.

    .venv/bin/python bench/parallel_speedup.py [-n 20] [--seconds 1] [--reps 3]
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


def forge(manifest: Path, artifacts: Path, n: int) -> float:
    runner, _ = forge_api()
    t0 = now()
    plan = runner.prepare(OBJECTIVE, candidates=str(manifest), artifacts_dir=str(artifacts),
                          post=False)
    result = runner.execute(plan)
    wall = now() - t0
    ok = sum(r.success for r in result.results)
    assert ok == n, [r.error_message for r in result.results if not r.success][:3]
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    info = machine()
    with Cluster(args.workers, args.concurrency) as cluster:
        manifest = sleepers(cluster.tmp / "cands", args.n, args.seconds)
        ideal = math.ceil(args.n / cluster.slots) * args.seconds
        forge(manifest, cluster.artifacts, args.n)  # warm-up: imports, first sandbox
        reps = []
        for _ in range(args.reps):
            reps.append({"baseline_s": baseline(manifest, args.n),
                         "forge_s": forge(manifest, cluster.artifacts, args.n)})
    base = median([r["baseline_s"] for r in reps])
    wall = median([r["forge_s"] for r in reps])
    data = {
        **info, "n": args.n, "seconds": args.seconds, "slots": args.workers * args.concurrency,
        "workers": args.workers, "concurrency": args.concurrency, "pool": "prefork",
        "ideal_s": ideal, "reps": reps, "baseline_s": base, "forge_s": wall,
        "forge_over_ideal": wall / ideal, "speedup": base / wall,
        "target_forge_over_ideal": 1.15, "aim_forge_over_ideal": 1.05,
    }
    table(f"Parallel speedup: {args.n} x {args.seconds}s candidates, "
          f"{args.workers} workers x {args.concurrency} (median of {args.reps})",
          ["measure", "value"],
          [["baseline (seed, sequential) s", base], ["forge wall s", wall],
           ["ideal wall s (ceil(N/slots) x t)", ideal],
           ["forge / ideal (target <= 1.15)", wall / ideal], ["speedup over seed", base / wall]])
    print(f"JSON: {write_json('parallel_speedup', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
