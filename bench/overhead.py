"""Per-candidate overhead: trivial candidates through the whole distributed path.

Forge: Redis, 2 prefork workers x concurrency 4, the local backend's bubblewrap sandbox
(its default), the judge and the run directory. Baseline: the same scripts run by a
plain process pool of the same width, each ``subprocess.run`` writing the same file.
Both sides run in every repetition, interleaved. The forge's time is broken down from
the results' phase timings (``CandidateResult.timings``) and the chord body's.

    .venv/bin/python bench/overhead.py [-n 200] [--reps 3] [--pool threads] [--floor] [--warm N]

``--floor`` adds two sides that size what the forge cannot go below with its isolation
and its transport kept: the sandbox lifecycle alone (the same candidates through
``run_lifecycle`` on a process pool of the same width: bubblewrap, network, cgroups, no
Celery, no Redis) and a bare Celery chord of as many no-op tasks (bench/bare_celery.py:
the same broker, backend, late acks and prefetch, no task events, on its own 2 x 4
workers). Their sum is the floor; the forge's excess over it is its own glue.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    TRIVIAL,
    Cluster,
    CpuMeter,
    TreeCpu,
    body_timings,
    forge_api,
    machine,
    machine_cpu_s,
    median,
    now,
    parse_ts,
    run_seed_style,
    sandbox_python,
    table,
    write_json,
)

from tests.manifests import write_manifest  # noqa: E402

OBJECTIVE = "bench: overhead"
PHASES = ("pre", "create", "upload", "exec", "collect", "delete", "progress", "task")


def _one(args: tuple[str, str, str]) -> int:
    script, out, python = args
    return run_seed_style(script, OBJECTIVE, out, python).returncode


def baseline(manifest: Path, n: int, width: int, python: str = sys.executable,
             tree: TreeCpu | None = None) -> tuple[float, float, float, float | None]:
    """(wall s, CPU s of the pool and its candidates, machine busy CPU s, CPU s of this
    benchmark's process tree: the pool, and the idle cluster beside it)."""
    import resource

    out = Path(tempfile.mkdtemp(prefix="forge-perf-pool-"))
    jobs = [(str(manifest.parent / f"c{i:04d}.py"), str(out / f"c{i:04d}.md"), python)
            for i in range(n)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m0 = machine_cpu_s()
    c0 = tree.usage() if tree else None
    t0 = now()
    with ProcessPoolExecutor(width) as pool:
        codes = list(pool.map(_one, jobs))
    wall = now() - t0
    machine = machine_cpu_s() - m0
    own = tree.usage() - c0 if c0 is not None else None
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(out, ignore_errors=True)
    assert codes == [0] * n
    return wall, (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime), machine, own


def _life_init() -> None:
    """A lifecycle-pool process warmed as a worker's pool process is, by the same hook."""
    from worker.tasks import _warm_up

    _warm_up()


def _life_one(args: tuple[str, str, bool]) -> bool:
    import hashlib

    from worker.lifecycle import run_lifecycle
    from worker.records import CandidateTask
    from worker.sandbox import get_backend

    cid, script, network = args
    task = CandidateTask(run_id="bench-floor", candidate_id=cid, name=cid,
                         script_name=f"{cid}.py", script=script,
                         script_sha256=hashlib.sha256(script.encode()).hexdigest(),
                         objective=OBJECTIVE, timeout=60, network=network)
    result = run_lifecycle(get_backend("local"), task, lambda _line: None)
    if not result.success:
        raise RuntimeError(f"{cid}: {result.error_message}")
    return True


def _measured(run, tree: TreeCpu | None) -> tuple[float, float, float | None]:
    """(wall s, machine busy CPU s, tree CPU s or None) of ``run()``."""
    m0, c0, t0 = machine_cpu_s(), tree.usage() if tree else None, now()
    run()
    wall = now() - t0
    return wall, machine_cpu_s() - m0, (tree.usage() - c0) if c0 is not None else None


def lifecycle_alone(pool: ProcessPoolExecutor, n: int, network: bool,
                    tree: TreeCpu | None) -> tuple[float, float, float | None]:
    """``_measured`` of the lifecycle of ``n`` trivial candidates, ``pool``'s width at a
    time, without Celery or Redis."""
    jobs = [(f"c{i:04d}", TRIVIAL, network) for i in range(n)]

    def run() -> None:
        assert all(pool.map(_life_one, jobs))

    return _measured(run, tree)


def bare_celery(n: int, tree: TreeCpu | None) -> tuple[float, float, float | None]:
    """``_measured`` of a chord of ``n`` no-op tasks and a counting body on the bare app's
    workers, published and awaited from here."""
    from bare_celery import count, noop
    from celery import chord

    def run() -> None:
        got = chord([noop.s(i) for i in range(n)])(count.s()).get(timeout=600)
        assert got == n, got

    return _measured(run, tree)


def forge(manifest: Path, artifacts: Path, n: int, meter: CpuMeter | None = None,
          tree: TreeCpu | None = None) -> dict:
    """One run, driven like ``runner.execute`` in distributed mode, with timestamps."""
    import time

    runner, dispatch = forge_api()

    if meter:
        meter.start()
    m0 = machine_cpu_s()
    c0 = tree.usage() if tree else None
    t0 = now()
    plan = runner.prepare(OBJECTIVE, candidates=str(manifest), artifacts_dir=str(artifacts),
                          post=False)
    t_prepared = now()
    dispatch.publish(plan)
    t_published, published_epoch = now(), time.time()
    result = dispatch.wait(plan)
    wall = now() - t0
    machine_cpu = machine_cpu_s() - m0
    own_cpu = tree.usage() - c0 if c0 is not None else None
    cpu = meter.stop() if meter else {}
    assert sum(r.success for r in result.results) == n, \
        [r.error_message for r in result.results if not r.success][:3]
    bt = body_timings(plan.run.run_id)
    tim = [r.timings for r in result.results]
    last_finish = max(parse_ts(r.finished_at) for r in result.results)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "machine_cpu_s": machine_cpu,
        "tree_cpu_s": own_cpu,
        "loadavg": os.getloadavg()[0],
        "prepare_s": t_prepared - t0,
        "publish_s": t_published - t_prepared,
        "queue_wait_median_s": median([t["entered_at"] - published_epoch for t in tim]),
        "first_start_s": min(t["entered_at"] for t in tim) - published_epoch,
        "phase_median_s": {p: median([t.get(p, 0.0) for t in tim]) for p in PHASES},
        "phase_sum_s": {p: sum(t.get(p, 0.0) for t in tim) for p in PHASES},
        "last_finish_to_body_s": bt.get("entered_at", last_finish) - last_finish,
        "body_score_s": bt.get("score"), "body_write_s": bt.get("write"),
        "body_total_s": bt.get("total"),
        "body_end_to_result_s": (published_epoch + (wall - (t_published - t0)))
        - (bt.get("entered_at", 0) + (bt.get("total") or 0)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--pool", choices=("prefork", "threads"), default="prefork",
                    help="the workers' Celery pool")
    ap.add_argument("--no-network", action="store_true",
                    help="candidates without network (no slirp4netns per sandbox)")
    ap.add_argument("--sandbox", choices=("bwrap", "plain"), default="bwrap",
                    help="plain: FORGE_SANDBOX=plain, no isolation (to size the sandbox's share)")
    ap.add_argument("--warm", type=int, default=None, metavar="N",
                    help="FORGE_WARM_SANDBOXES for the workers and the lifecycle side "
                         "(default: the setting's)")
    ap.add_argument("--floor", action="store_true",
                    help="also run the lifecycle alone and a bare Celery chord (the floor)")
    ap.add_argument("--progress-interval-ms", type=int, default=None,
                    help="FORGE_PROGRESS_INTERVAL_MS for the workers (0: store every line)")
    args = ap.parse_args()
    info = machine()
    extra = {"FORGE_SANDBOX": "plain"} if args.sandbox == "plain" else {}
    if args.warm is not None:
        extra["FORGE_WARM_SANDBOXES"] = str(args.warm)
    if args.progress_interval_ms is not None:
        extra["FORGE_PROGRESS_INTERVAL_MS"] = str(args.progress_interval_ms)
    tree = TreeCpu()  # before the cluster starts: its processes inherit the group
    try:
        reps = _measure(args, extra, tree)
    finally:
        tree.close()
    _report(args, info, reps)
    return 0


def _measure(args: argparse.Namespace, extra: dict[str, str], tree: TreeCpu) -> list[dict]:
    with Cluster(args.workers, args.concurrency, args.pool, extra_env=extra) as cluster:
        manifest = write_manifest(cluster.tmp / "cands",
                                  {f"c{i:04d}": TRIVIAL for i in range(args.n)},
                                  "network = false" if args.no_network else "")
        forge(manifest, cluster.artifacts, args.n)  # warm-up
        same_python = sandbox_python(cluster.tmp)
        floor = _Floor(cluster, args, tree) if args.floor else None
        reps = []
        for _ in range(args.reps):
            b, b_cpu, b_machine, b_tree = baseline(manifest, args.n, cluster.slots, tree=tree)
            s, _, s_machine, s_tree = baseline(manifest, args.n, cluster.slots, same_python,
                                               tree)
            f = forge(manifest, cluster.artifacts, args.n, CpuMeter(cluster), tree)
            reps.append({"baseline_s": b, "baseline_cpu_s": b_cpu,
                         "baseline_machine_cpu_s": b_machine, "baseline_tree_cpu_s": b_tree,
                         "same_python_s": s, "same_python_machine_cpu_s": s_machine,
                         "same_python_tree_cpu_s": s_tree, "forge": f,
                         **(floor.measure() if floor else {})})
        if floor:
            floor.close()
    return reps


class _Floor:
    """The floor's two sides, started beside the forge's cluster (its Redis shared)."""

    def __init__(self, cluster: Cluster, args: argparse.Namespace, tree: TreeCpu):
        from tests.procs import CeleryWorker

        self.n, self.network, self.tree = args.n, not args.no_network, tree
        self.pool = ProcessPoolExecutor(cluster.slots, initializer=_life_init)
        self.workers = [CeleryWorker(cluster.env, f"bare{i + 1}", cluster.tmp,
                                     args.concurrency, "prefork", app="bench.bare_celery")
                        for i in range(args.workers)]
        for w in self.workers:
            w.start(wait_ready=False)
        for w in self.workers:
            w.wait_ready(120)
        lifecycle_alone(self.pool, cluster.slots, self.network, None)  # warm-up
        bare_celery(cluster.slots, None)

    def measure(self) -> dict:
        lw, lm, lt = lifecycle_alone(self.pool, self.n, self.network, self.tree)
        cw, cm, ct = bare_celery(self.n, self.tree)
        return {"lifecycle_s": lw, "lifecycle_machine_cpu_s": lm, "lifecycle_tree_cpu_s": lt,
                "bare_celery_s": cw, "bare_celery_machine_cpu_s": cm,
                "bare_celery_tree_cpu_s": ct}

    def close(self) -> None:
        self.pool.shutdown()
        for w in self.workers:
            w.stop()


def _report(args: argparse.Namespace, info: dict, reps: list[dict]) -> None:
    base = median([r["baseline_s"] for r in reps])
    same = median([r["same_python_s"] for r in reps])
    best = sorted(reps, key=lambda r: r["forge"]["wall_s"])[len(reps) // 2]["forge"]
    wall = best["wall_s"]
    width = args.workers * args.concurrency
    data = {**info, "n": args.n, "width": width, "reps": reps, "sandbox": args.sandbox,
            "warm_sandboxes": args.warm,
            "pool": args.pool,
            "network": not args.no_network, "progress_interval_ms": args.progress_interval_ms,
            "baseline_s": base, "forge_s": wall,
            "baseline_per_s": args.n / base, "forge_per_s": args.n / wall,
            "ratio": base / wall, "target_ratio": 0.6, "aim_ratio": 0.8, "median_rep": best,
            "same_python_s": same, "ratio_same_python": same / wall}
    table(f"Overhead: {args.n} trivial candidates, width {width}, {args.pool} pool, "
          f"sandbox {args.sandbox}, network {'off' if args.no_network else 'on'} "
          f"(median of {args.reps})",
          ["measure", "value"],
          [["baseline pool wall s", base], ["forge wall s", wall],
           ["baseline candidates/s", args.n / base], ["forge candidates/s", args.n / wall],
           ["ratio forge/baseline (target >= 0.6)", base / wall],
           ["pool with the sandbox's python (no host site-packages) candidates/s",
            args.n / same],
           ["ratio forge/that pool", same / wall]])
    ph = best["phase_median_s"]
    sums = best["phase_sum_s"]
    table("Forge time breakdown (median run)", ["part", "per candidate (median) s", "sum s"],
          [["prepare (manifest, plan)", best["prepare_s"], "-"],
           ["dispatch (publish the chord)", best["publish_s"], "-"],
           ["first task starts after publish", best["first_start_s"], "-"],
           ["queue wait (publish -> task start)", best["queue_wait_median_s"], "-"],
           *[[f"task: {p}", ph[p], sums[p]] for p in PHASES],
           ["last result -> body start", best["last_finish_to_body_s"], "-"],
           ["body: score", best["body_score_s"], "-"],
           ["body: write run dir", best["body_write_s"], "-"],
           ["body end -> dispatcher has result", best["body_end_to_result_s"], "-"]])
    name = "overhead" + ("_plain" if args.sandbox == "plain" else "") + \
        ("_threads" if args.pool == "threads" else "") + \
        ("_nonet" if args.no_network else "") + \
        (f"_progress{args.progress_interval_ms}" if args.progress_interval_ms is not None else "")
    base_cpu = median([r["baseline_cpu_s"] for r in reps])
    cpu = best["cpu_s"]
    b_machine = median([r["baseline_machine_cpu_s"] for r in reps])
    s_machine = median([r["same_python_machine_cpu_s"] for r in reps])
    tree_rows = []
    if best.get("tree_cpu_s") is not None:
        t_forge = median([r["forge"]["tree_cpu_s"] for r in reps])
        t_base = median([r["baseline_tree_cpu_s"] for r in reps])
        t_same = median([r["same_python_tree_cpu_s"] for r in reps])
        data.update(tree_cpu_s=t_forge, baseline_tree_cpu_s=t_base,
                    same_python_tree_cpu_s=t_same,
                    tree_cpu_per_candidate_ms=1000 * t_forge / args.n)
        # The must is in ms, set when the lean pool needed ~10 ms: on a slower day the
        # same machine doubles both, so the ratio is what compares across days.
        data["tree_cpu_per_lean_pool"] = t_forge / t_same
        tree_rows = [
            ["this benchmark's processes only (cpuacct; median of reps)",
             1000 * t_forge / args.n, 1000 * t_base / args.n],
            ["  the same, pool with the sandbox's python", "-", 1000 * t_same / args.n],
            ["  forge / that pool (x; the must's 22 ms was 2.2 x on its day)",
             t_forge / t_same, "-"]]
    table("CPU per candidate (ms): where a CPU-bound run's time goes",
          ["part", "forge ms / candidate", "baseline ms / candidate"],
          [*[[k, 1000 * v / args.n, "-"] for k, v in cpu.items()],
           ["total of the above", 1000 * sum(cpu.values()) / args.n, 1000 * base_cpu / args.n],
           ["whole machine (/proc/stat)", 1000 * best["machine_cpu_s"] / args.n,
            1000 * b_machine / args.n],
           ["whole machine, pool with the sandbox's python", "-", 1000 * s_machine / args.n],
           *tree_rows])
    data["baseline_cpu_s"] = base_cpu
    data["baseline_machine_cpu_s"] = b_machine
    data["machine_cpu_per_candidate_ms"] = 1000 * median(
        [r["forge"]["machine_cpu_s"] for r in reps]) / args.n
    data["loadavg_per_rep"] = [round(r["forge"]["loadavg"], 2) for r in reps]
    if args.floor:
        _report_floor(args, reps, data)
    print(f"load average at each forge run: {data['loadavg_per_rep']}")
    print(f"JSON: {write_json(name, data)}")


def _report_floor(args: argparse.Namespace, reps: list[dict], data: dict) -> None:
    """The floor's table: per candidate, tree CPU (whole machine beside it), each side's
    median over the repetitions, and the forge's excess over the floor."""
    def per(key: str, side: str | None = None) -> float | None:  # side: "forge"
        values = [v for r in reps if (v := (r[side] if side else r).get(key)) is not None]
        return 1000 * median(values) / args.n if values else None

    rows, floor = [], {}
    for label, tree_key, machine_key in (
            ("lean pool (the sandbox's python, no sandbox)", "same_python_tree_cpu_s",
             "same_python_machine_cpu_s"),
            ("the sandbox lifecycle alone, no Celery", "lifecycle_tree_cpu_s",
             "lifecycle_machine_cpu_s"),
            ("bare Celery: a chord of no-op tasks", "bare_celery_tree_cpu_s",
             "bare_celery_machine_cpu_s")):
        floor[tree_key] = (per(tree_key), per(machine_key))
        rows.append([label, *floor[tree_key]])
    life, bare = floor["lifecycle_tree_cpu_s"], floor["bare_celery_tree_cpu_s"]
    total = [a + b if a is not None and b is not None else None
             for a, b in zip(life, bare, strict=True)]
    forge_ms = [per("tree_cpu_s", "forge"), per("machine_cpu_s", "forge")]
    excess = [f - t if f is not None and t is not None else None
              for f, t in zip(forge_ms, total, strict=True)]
    rows += [["floor: lifecycle alone + bare Celery", *total], ["forge", *forge_ms],
             ["forge - floor (the forge's own glue)", *excess]]
    table(f"The floor: CPU per trivial candidate (ms, median of {args.reps}), "
          f"network {'off' if args.no_network else 'on'}",
          ["side", "this benchmark's processes (cpuacct)", "whole machine (/proc/stat)"],
          [[label, *("-" if v is None else v for v in values)] for label, *values in rows])
    data["floor_ms"] = {"lean_pool": floor["same_python_tree_cpu_s"], "lifecycle": life,
                        "bare_celery": bare, "floor": total, "forge": forge_ms,
                        "excess": excess, "columns": ["tree", "machine"]}


if __name__ == "__main__":
    sys.exit(main())
