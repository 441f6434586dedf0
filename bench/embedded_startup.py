"""Embedded mode: time from ``forge run`` to the first candidate running, and the demo.

Startup: ``forge run`` (a subprocess, no broker: in-process worker) on one candidate
whose first statement stamps ``time.time()`` into its artifact (the sandbox shares the
host's clock); measured from just before the spawn. Demo: ``forge run`` on
candidates/candidates.toml, wall time of the whole command, next to the seed's
sequential loop over the same five agents and the slowest agent alone (the ideal for a
parallel run).

    .venv/bin/python bench/embedded_startup.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, median, now, parse_ts, run_seed_style, table, write_json  # noqa: E402, I001

from tests.manifests import write_manifest  # noqa: E402
from tests.procs import forge_env  # noqa: E402

STAMP = ("import time\nT = time.time()\nimport sys\n"
         "open(sys.argv[2], 'w').write('# started\\n\\nstarted_at: %r\\n' % T)\n")
DEMO = ROOT / "candidates" / "candidates.toml"
OBJECTIVE = "Generate weekly 'AI Events in San Francisco' post for Discord"


def forge_run(manifest: Path, artifacts: Path) -> tuple[float, float, dict]:
    """(spawn epoch, wall seconds, ForgeResult dict) of one embedded ``forge run``."""
    env = forge_env(None, artifacts)
    t_epoch, t0 = time.time(), now()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "forge"), "run", "--candidates",
                           str(manifest), "--no-post", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    wall = now() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    return t_epoch, wall, json.loads(done.stdout)


def startup(tmp: Path) -> dict:
    manifest = write_manifest(tmp / "stamp", {"stamp": STAMP})
    spawned, wall, result = forge_run(manifest, tmp / "art")
    r = result["results"][0]
    assert r["success"], r["error_message"]
    started = float(r["artifact_content"].split("started_at:")[1])
    return {"wall_s": wall, "to_task_start_s": r["timings"]["entered_at"] - spawned,
            "to_sandbox_start_s": parse_ts(r["started_at"]) - spawned,
            "to_candidate_running_s": started - spawned,
            "after_candidate_s": wall - (started - spawned)}


def demo(tmp: Path) -> dict:
    _, wall, result = forge_run(DEMO, tmp / "art")
    runtimes = {r["candidate_id"]: r["runtime_seconds"] for r in result["results"]}
    return {"wall_s": wall, "slowest_in_run_s": max(runtimes.values()), "runtimes": runtimes}


def seed(tmp: Path) -> dict:
    """The seed's sequential loop over the demo agents, and the slowest one alone."""
    scripts = sorted((ROOT / "candidates").glob("agent_*.py"))
    each = {}
    t0 = now()
    for s in scripts:
        t = now()
        run_seed_style(str(s), OBJECTIVE, str(tmp / f"{s.stem}.md"))
        each[s.stem] = now() - t
    return {"sequential_s": now() - t0, "slowest_s": max(each.values()), "each": each}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="forge-perf-emb-"))
    startup(tmp)  # warm-up: page cache, bytecode
    try:
        reps = [{"startup": startup(tmp), "demo": demo(tmp), "seed": seed(tmp)}
                for _ in range(args.reps)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(part: str, key: str) -> float:
        return median([r[part][key] for r in reps])

    data = {**info, "reps": reps,
            "to_candidate_running_s": med("startup", "to_candidate_running_s"),
            "to_task_start_s": med("startup", "to_task_start_s"),
            "startup_wall_s": med("startup", "wall_s"),
            "demo_wall_s": med("demo", "wall_s"),
            "demo_slowest_in_run_s": med("demo", "slowest_in_run_s"),
            "seed_sequential_s": med("seed", "sequential_s"),
            "seed_slowest_s": med("seed", "slowest_s"),
            "target_startup_s": 1.5, "aim_startup_s": 0.7}
    table(f"Embedded mode (median of {args.reps})", ["measure", "value"], [
        ["forge run -> run_candidate starts s", data["to_task_start_s"]],
        ["forge run -> candidate script running s (target <= 1.5)",
         data["to_candidate_running_s"]],
        ["one trivial candidate: whole command s", data["startup_wall_s"]],
        ["demo (5 agents): whole forge run s", data["demo_wall_s"]],
        ["demo: slowest agent inside the run s", data["demo_slowest_in_run_s"]],
        ["seed: 5 agents sequential s", data["seed_sequential_s"]],
        ["seed: slowest agent alone s", data["seed_slowest_s"]],
    ])
    print(f"JSON: {write_json('embedded_startup', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
