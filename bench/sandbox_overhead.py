"""Per-candidate overhead of the local sandbox versus a plain subprocess.

Runs the same trivial candidate (write a one-line artifact, exit 0) N times per variant,
interleaved so that every variant sees the same machine load:

* ``subprocess``   : ``subprocess.run([python3, script, objective, out])``, nothing else
  (the same interpreter environment a sandbox gets: the base interpreter without the
  host's site-packages, so only the sandbox is measured);
* ``plain``        : the full lifecycle with the no-bubblewrap fallback sandbox;
* ``bwrap``        : the full lifecycle, bubblewrap, network off;
* ``bwrap+net``    : the full lifecycle, bubblewrap, slirp4netns outbound-only network,
  with its egress policy (routes installed over rtnetlink) and the cpu/cpuacct cgroups
  of the fair share;
* ``net-nopolicy`` : the same without the egress routes and with only the memory/pids
  cgroups, as before issue 19: ``bwrap+net`` minus this is what the policy and the fair
  share add per candidate, measured side by side.

The lifecycle variants include everything a candidate costs: temp dir, cgroups, upload,
run, artifact download and deletion. Prints a table; writes JSON to bench/results/.

    python bench/sandbox_overhead.py [-n 30]
    FORGE_NO_CGROUPS=1 python bench/sandbox_overhead.py   # without the memory/pids cgroup
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.lifecycle import run_lifecycle  # noqa: E402
from worker.records import CandidateTask, sha256_text  # noqa: E402
from worker.sandbox import egress, rtnetlink  # noqa: E402
from worker.sandbox.local import LocalBackend, bwrap, cgroups  # noqa: E402
from worker.sandbox.local.parent_dir import sandbox_parent  # noqa: E402
from worker.sandbox.local.plain import PlainSandbox  # noqa: E402
from worker.sandbox.local.pyenv import make_python_env  # noqa: E402

SCRIPT = "import sys\nopen(sys.argv[2], 'w').write('# hi\\n')\n"


class PlainBackend(LocalBackend):
    def create(self, request, log, status=None):
        root = tempfile.mkdtemp(prefix="forge-bench-", dir=sandbox_parent())
        return PlainSandbox(request, root, "bench")


def task(network: bool) -> CandidateTask:
    return CandidateTask(run_id="bench", candidate_id="bench", name="bench", script_name="s.py",
                         script=SCRIPT, script_sha256=sha256_text(SCRIPT), objective="bench",
                         timeout=30, network=network)


def run_subprocess(workdir: str) -> float:
    script = os.path.join(workdir, "script.py")
    out = os.path.join(workdir, "out.md")
    t0 = time.perf_counter()
    subprocess.run([os.path.join(workdir, "python", "bin", "python3"), script, "bench", out],
                   check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


class NoPolicy:
    """The pre-issue-19 network-on sandbox: no egress routes, memory/pids cgroups only."""

    policy = None

    def __enter__(self):
        self.saved = rtnetlink.install, cgroups.ALL_CONTROLLERS, egress.build
        NoPolicy.policy = NoPolicy.policy or egress.build(task(True).egress)
        rtnetlink.install = lambda *_a, **_k: None
        cgroups.ALL_CONTROLLERS = ("pids", "memory")
        egress.build = lambda _lists: NoPolicy.policy  # for the isolation words only

    def __exit__(self, *_exc):
        rtnetlink.install, cgroups.ALL_CONTROLLERS, egress.build = self.saved


# The steps the egress policy and the fair share add or change, timed where they run in
# the lifecycle. On a loaded machine the whole-candidate medians move by tens of ms from
# run to run; these timers see only the ~1 ms that differs between the two network-on
# variants, so their difference is the added cost, measured side by side.
STEPS: dict[str, float] = {}


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            STEPS[name] = STEPS.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


def instrument() -> None:
    for name in ("__init__", "add", "cpu_ns", "kill_all", "remove"):
        setattr(cgroups.Cgroups, name, _timed(f"cgroups.{name}", getattr(cgroups.Cgroups, name)))
    egress.build = _timed("egress.build", egress.build)
    rtnetlink.install = _timed("rtnetlink.install", rtnetlink.install)


STEP_NAMES = ("cgroups.__init__", "cgroups.add", "cgroups.cpu_ns", "cgroups.kill_all",
              "cgroups.remove", "egress.build", "rtnetlink.install")


def run_backend(backend, network: bool, steps: dict[str, list[float]] | None = None) -> float:
    STEPS.clear()
    t0 = time.perf_counter()
    result = run_lifecycle(backend, task(network), lambda _m: None)
    elapsed = time.perf_counter() - t0
    if not result.success:
        raise SystemExit(f"bench candidate failed: {result.error_message}\n{result.output}")
    if steps is not None:
        for name in STEP_NAMES:
            steps.setdefault(name, []).append(STEPS.get(name, 0.0))
    return elapsed


def summarise(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "mean_ms": statistics.fmean(samples) * 1000,
        "median_ms": statistics.median(samples) * 1000,
        "p95_ms": ordered[max(int(len(ordered) * 0.95) - 1, 0)] * 1000,
        "min_ms": ordered[0] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="runs per variant (default 30)")
    args = parser.parse_args()
    probe = bwrap.probe()
    if not probe.ok:
        raise SystemExit(f"bubblewrap unavailable: {probe.reason}")
    print(f"{args.n} runs per variant; per-sandbox cgroups "
          f"{'OFF (FORGE_NO_CGROUPS)' if os.environ.get('FORGE_NO_CGROUPS') else 'on'}")
    workdir = tempfile.mkdtemp(prefix="forge-bench-sub-", dir=sandbox_parent())
    make_python_env(os.path.join(workdir, "python"), None)
    with open(os.path.join(workdir, "script.py"), "w") as fh:
        fh.write(SCRIPT)
    instrument()
    step_samples: dict[str, dict[str, list[float]]] = {"bwrap+net": {}, "net-nopolicy": {}}

    def without_policy() -> float:
        with NoPolicy():
            return run_backend(LocalBackend(), True, step_samples["net-nopolicy"])

    variants = {
        "subprocess": lambda: run_subprocess(workdir),
        "plain": lambda: run_backend(PlainBackend(), False),
        "bwrap": lambda: run_backend(LocalBackend(), False),
        "bwrap+net": lambda: run_backend(LocalBackend(), True, step_samples["bwrap+net"]),
        "net-nopolicy": lambda: without_policy(),
    }
    for run in variants.values():  # warm-up: page cache, probe
        run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.n):
        for name, run in variants.items():
            samples[name].append(run())
    base = statistics.median(samples["subprocess"])
    added = [a - b for a, b in zip(samples["bwrap+net"], samples["net-nopolicy"], strict=True)]
    table = {}
    print(f"{'variant':<12}{'median ms':>11}{'mean ms':>10}{'p95 ms':>9}{'min ms':>9}"
          f"{'x subproc':>11}{'+ms':>8}")
    for name, values in samples.items():
        s = summarise(values)
        s["ratio_median"] = statistics.median(values) / base
        s["overhead_median_ms"] = (statistics.median(values) - base) * 1000
        table[name] = s
        print(f"{name:<12}{s['median_ms']:>11.1f}{s['mean_ms']:>10.1f}{s['p95_ms']:>9.1f}"
              f"{s['min_ms']:>9.1f}{s['ratio_median']:>11.2f}{s['overhead_median_ms']:>8.1f}")
    diff = (statistics.median(samples["bwrap+net"])
            - statistics.median(samples["net-nopolicy"])) * 1000
    paired = statistics.median(added) * 1000
    print(f"\n{'step (median ms)':<20}{'bwrap+net':>11}{'net-nopolicy':>14}{'added':>8}")
    steps_table = {}
    for name in STEP_NAMES:
        w = statistics.median(step_samples["bwrap+net"][name]) * 1000
        wo = statistics.median(step_samples["net-nopolicy"][name]) * 1000
        steps_table[name] = {"with_ms": w, "without_ms": wo, "added_ms": w - wo}
        print(f"{name:<20}{w:>11.3f}{wo:>14.3f}{w - wo:>+8.3f}")
    added_steps = sum(v["added_ms"] for v in steps_table.values())
    print(f"egress policy + fair share per candidate: +{added_steps:.2f} ms (sum of the steps' "
          f"added medians). Whole candidate, bwrap+net - net-nopolicy: {diff:+.2f} ms between "
          f"medians, {paired:+.2f} ms median of paired differences (machine noise included)")
    table["policy_added_ms"] = {"steps": steps_table, "steps_added": added_steps,
                                "whole_median_diff": diff, "whole_median_paired": paired}
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"sandbox_overhead-{stamp}.json"
    path.write_text(json.dumps({
        "runs_per_variant": args.n,
        "cgroups": os.environ.get("FORGE_NO_CGROUPS", "") not in ("1", "true", "yes", "on"),
        "host_uid_drop": probe.drop_uid,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "variants": table,
    }, indent=2))
    print(f"written {path}")
    subprocess.run(["rm", "-rf", workdir], check=False)


if __name__ == "__main__":
    main()
