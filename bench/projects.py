"""Directory candidates (issue 20): planning and shipping a 5 MB project against a
one-file candidate, side by side, and what each extra candidate sharing it adds.

One repetition, for each side in turn (order alternating): plan the run (load the
manifest: read the script, or walk, pack and hash the project; build the tasks), store
what the run ships (the project's bundle into a private redis-server through the result
backend, as ``forge run`` does; nothing for a script), fetch it as a worker would (a
cold per-process cache: GET and verify the hash), and put it into a fresh local sandbox
(the script's upload, or the project's unpack). Sandbox creation and deletion are
outside the timed part: they are the same for both. The overhead is project minus
script, per run: wall time, and the CPU time of this process (planning, fetching and
unpacking; Redis's own share is not in it), which a busy machine inflates less. The
store is measured cold (a new or changed project: the bytes go
over the wire) and warm (the same project in a later run: EXISTS and EXPIRE only).

Extra candidates: one manifest of 1 candidate and one of 51 sharing the same project,
planned alternately; (51 - 1) / 50 is what each extra one adds.

    .venv/bin/python bench/projects.py [--reps 15] [--mb 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SCRATCH, TRIVIAL, Cluster, machine, median, table, write_json  # noqa: E402

MUST_MS, AIM_MS, PER_EXTRA_MS = 100.0, 50.0, 5.0


def make_sides(base: Path, mb: float) -> tuple[Path, Path, Path, Path]:
    """(script manifest, project manifest, 1-candidate and 51-candidate project manifests)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "one.py").write_text(TRIVIAL)
    project = base / "proj"
    (project / "agent").mkdir(parents=True, exist_ok=True)
    (project / "agent" / "__main__.py").write_text(TRIVIAL)
    for i in range(20):  # a realistic spread: some modules, a data file, a model-ish blob
        (project / "agent" / f"mod{i:02d}.py").write_text(f"X = {i}\n" * 200)
    (project / "data").mkdir(exist_ok=True)
    (project / "data" / "feed.json").write_text('{"events": []}\n' * 1000)
    blob = int(mb * 1_000_000) - sum(f.stat().st_size for f in project.rglob("*") if f.is_file())
    (project / "data" / "weights.bin").write_bytes(os.urandom(max(blob, 0)))
    script = base / "script.toml"
    script.write_text('[[candidate]]\nid = "one"\nscript = "one.py"\n')
    proj = base / "project.toml"
    proj.write_text('[[candidate]]\nid = "p"\npath = "proj"\nmodule = "agent"\n')
    many = base / "many.toml"
    many.write_text("".join(f'[[candidate]]\nid = "p{i:02d}"\npath = "proj"\nmodule = "agent"\n'
                            for i in range(51)))
    return script, proj, proj, many


def one_run(manifest: Path, cold: bool) -> dict[str, float]:
    """Plan, store, fetch, ship one run of ``manifest``; seconds per step."""
    from dispatcher.dispatch import app, store_bundles
    from dispatcher.manifest import load_manifest
    from dispatcher.plan import plan_run
    from dispatcher.request import RunRequest
    from worker.bundles import BundleCache
    from worker.keys import bundle_key
    from worker.lifecycle import SCRIPT_NAME, _unpack
    from worker.sandbox.base import SandboxRequest
    from worker.sandbox.local import LocalBackend

    c0, t0 = time.process_time(), time.perf_counter()
    plan = plan_run(RunRequest("bench", artifacts_dir=str(SCRATCH)), load_manifest(manifest))
    planned, cpu = time.perf_counter() - t0, time.process_time() - c0
    if cold:
        for sha in plan.bundles:
            app.backend.client.delete(bundle_key(sha))
    c1, t1 = time.process_time(), time.perf_counter()
    store_bundles(plan)
    t2 = time.perf_counter()
    task = plan.tasks[0]
    archive = BundleCache().get(app.backend, task.project.sha256) if task.project else b""
    t3 = time.perf_counter()
    cpu += time.process_time() - c1
    sandbox = LocalBackend().create(SandboxRequest(run_id="bench", candidate_id="c", timeout=60,
                                                   network=False), lambda _m: None)
    try:
        c4, t4 = time.process_time(), time.perf_counter()
        if task.project:
            failed = _unpack(sandbox, task, archive)
            assert failed is None, failed.output
        else:
            sandbox.upload(task.script.encode(), f"{sandbox.workdir}/{SCRIPT_NAME}", 30)
        t5 = time.perf_counter()
        cpu += time.process_time() - c4
    finally:
        sandbox.delete()
    return {"plan": planned, "store": t2 - t1, "fetch": t3 - t2, "ship": t5 - t4,
            "total": planned + (t2 - t1) + (t3 - t2) + (t5 - t4), "cpu": cpu}


def plan_only(manifest: Path) -> float:
    from dispatcher.manifest import load_manifest
    from dispatcher.plan import plan_run
    from dispatcher.request import RunRequest

    t0 = time.perf_counter()
    plan_run(RunRequest("bench", artifacts_dir=str(SCRATCH)), load_manifest(manifest))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--mb", type=float, default=5.0)
    args = ap.parse_args()
    info = machine()
    with Cluster(start_workers=False) as cluster:
        script, proj, one, many = make_sides(cluster.tmp / "cands", args.mb)
        one_run(script, True), one_run(proj, True)  # warm imports and caches of both sides
        runs: dict[str, list[dict[str, float]]] = {"script": [], "cold": [], "warm": []}
        for rep in range(args.reps):
            order = [("script", script, True), ("cold", proj, True), ("warm", proj, False)]
            for name, manifest, cold in order if rep % 2 == 0 else order[::-1]:
                runs[name].append(one_run(manifest, cold))
        extra_one, extra_many = [], []
        for rep in range(args.reps):
            for bucket, manifest in ([(extra_one, one), (extra_many, many)] if rep % 2 == 0
                                     else [(extra_many, many), (extra_one, one)]):
                bucket.append(plan_only(manifest))
    steps = ("plan", "store", "fetch", "ship", "total", "cpu")
    med = {name: {s: 1000 * median([r[s] for r in rs]) for s in steps}
           for name, rs in runs.items()}
    paired = {side: 1000 * median([p["total"] - s["total"]
                                   for p, s in zip(runs[side], runs["script"], strict=True)])
              for side in ("cold", "warm")}
    paired_cpu = {side: 1000 * median([p["cpu"] - s["cpu"]
                                       for p, s in zip(runs[side], runs["script"], strict=True)])
                  for side in ("cold", "warm")}
    per_extra = 1000 * (median(extra_many) - median(extra_one)) / 50
    rows = [[name] + [round(med[name][s], 2) for s in steps] for name in med]
    table(f"Planning + shipping one run, ms (median of {args.reps}; {args.mb:g} MB project)",
          ["side", *steps], rows)
    table("Overhead of the project over the one-file candidate, ms per run",
          ["store", "wall, median of paired reps", "CPU of this process", "must", "aim"],
          [[side, round(paired[side], 2), round(paired_cpu[side], 2), MUST_MS, AIM_MS]
           for side in paired])
    table("Planning, each extra candidate sharing the project",
          ["1 candidate ms", "51 candidates ms", "per extra ms", "bound ms"],
          [[round(1000 * median(extra_one), 2), round(1000 * median(extra_many), 2),
            round(per_extra, 3), PER_EXTRA_MS]])
    path = write_json("projects", {"machine": info, "reps": args.reps, "mb": args.mb,
                                   "median_ms": med, "overhead_ms": paired,
                                   "overhead_cpu_ms": paired_cpu,
                                   "loadavg_at_end": os.getloadavg(),
                                   "per_extra_candidate_ms": per_extra})
    print(f"wrote {path}")
    ok = paired["cold"] <= MUST_MS and per_extra <= PER_EXTRA_MS
    print("within bounds" if ok else "OVER A BOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
