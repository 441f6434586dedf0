"""Embedded mode: time from ``forge run`` to the first candidate running, and the demo.

Startup: ``forge run`` (a subprocess, no broker: in-process worker) on one candidate
whose first statement stamps ``time.time()`` into its artifact (the sandbox shares the
host's clock); measured from just before the spawn. Demo: ``forge run`` on
candidates/candidates.toml on a terminal (a pseudo-terminal: the live display is on, as
a newcomer sees it), wall time of the whole command, next to the seed's sequential loop
over the same five agents and the slowest agent alone (the ideal for a parallel run),
in the same repetition.

Breakdown: the demo runs with ``FORGE_TRACE`` (worker/trace.py), so the CLI, the
embedded worker, every candidate's lifecycle and the chord body stamp their phases;
the table gives each phase's share of the wall time (medians over repetitions).

Both sides' modules are byte-compiled first, as ``make demo`` does (with
``PYTHONDONTWRITEBYTECODE`` set, every run would compile them again).

``--compare DIR`` runs the demo from another checkout of the project too (same
interpreter, its code on PYTHONPATH; with the same tracer for a breakdown), alternating
with this one: before/after figures from one sitting.

    .venv/bin/python bench/embedded_startup.py [--reps 5] [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, median, now, parse_ts, run_seed_style, table, write_json  # noqa: E402, I001

from tests.manifests import write_manifest  # noqa: E402
from tests.procs import forge_env  # noqa: E402

STAMP = ("import time\nT = time.time()\nimport sys\n"
         "open(sys.argv[2], 'w').write('# started\\n\\nstarted_at: %r\\n' % T)\n")
DEMO = ROOT / "candidates" / "candidates.toml"
OBJECTIVE = "Generate weekly 'AI Events in San Francisco' post for Discord"
# Exactly what the console script `forge` does, for any checkout on PYTHONPATH.
FORGE = ("import sys\nfrom dispatcher.cli import main\nsys.argv[0] = 'forge'\n"
         "sys.exit(main())\n")

# (label, from mark, to mark) of the breakdown; "spawn" and "exit" are the benchmark's
# own stamps around the process, "cand.*" marks are taken at the candidate named in
# the last column ("first" / "last": first to begin / last to finish executing).
PHASES = [
    ("interpreter start + CLI imports", "spawn", "cli.main"),
    ("Celery and run imports, manifest, plan", "cli.main", "planned"),
    ("embedded worker start", "worker.starting", "worker.ready"),
    ("publish the chord", "worker.ready", "published"),
    ("first task picked up", "published", "cand.begin@first"),
    ("sandbox creation (per candidate, median)", "cand.begin@each", "cand.create@each"),
    ("upload (per candidate, median)", "cand.create@each", "cand.upload@each"),
    ("first candidate begins -> slowest's sandbox ready", "cand.begin@first",
     "cand.upload@slowest"),
    ("slowest: its requirements installed (pip, in its sandbox)", "cand.upload@slowest",
     "cand.ready@slowest"),
    ("slowest candidate executing", "cand.ready@slowest", "cand.exec@slowest"),
    ("its artifact and sandbox removal", "cand.exec@slowest", "cand.delete@slowest"),
    ("last sandbox gone -> chord body starts", "cand.delete@last", "body.entered"),
    ("judging", "body.entered", "body.scored"),
    ("run directory and reports", "body.scored", "body.written"),
    ("run store", "body.written", "body.stored"),
    ("result reaches the CLI", "body.stored", "result"),
    ("embedded worker stop", "result", "worker.stopped"),
    ("live display teardown", "worker.stopped", "display.closed"),
    ("summary printed", "display.closed", "printed"),
    ("interpreter exit", "printed", "exit"),
]


def forge_cmd(root: Path) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-c", FORGE], {"PYTHONPATH": str(root)}


def forge_run(manifest: Path, artifacts: Path, root: Path = ROOT) -> tuple[float, float, dict]:
    """(spawn epoch, wall seconds, ForgeResult dict) of one embedded ``forge run``."""
    cmd, extra = forge_cmd(root)
    env = {**forge_env(None, artifacts), **extra}
    t_epoch, t0 = time.time(), now()
    done = subprocess.run([*cmd, "run", "--candidates", str(manifest), "--no-post", "--json"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    wall = now() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    return t_epoch, wall, json.loads(done.stdout)


def on_terminal(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """Run ``cmd`` with a pseudo-terminal as stdout/stderr (rich's live display on);
    returns (spawn epoch, exit epoch, wall). Output is read as it comes and dropped."""
    master, slave = pty.openpty()
    reader = threading.Thread(target=_drain, args=(master,), daemon=True)
    reader.start()
    t_epoch, t0 = time.time(), now()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave)
    os.close(slave)
    rc = proc.wait(120)
    wall, t_exit = now() - t0, time.time()
    reader.join(5)
    os.close(master)
    assert rc == 0, f"forge run exited {rc}"
    return t_epoch, t_exit, wall


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # EIO once the last writer closed the terminal
        pass


def read_trace(path: Path) -> list[tuple[float, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        t, _pid, label, *rest = line.split(" ")
        out.append((float(t), label, rest[0] if rest else ""))
    return out


def breakdown(marks: list[tuple[float, str, str]], spawn: float, exit_: float,
              runtimes: dict[str, float]) -> dict[str, float]:
    """Seconds per phase (PHASES) of one traced run."""
    at: dict[str, float] = {"spawn": spawn, "exit": exit_}
    per: dict[str, dict[str, float]] = {}
    for t, label, who in marks:
        if who:
            per.setdefault(label, {})[who] = t
        at.setdefault(label, t)  # the first stamp of a label
    # a candidate's script starts after its upload, or after its install when it has one
    per["cand.ready"] = {**per.get("cand.upload", {}), **per.get("cand.install", {})}
    begins = per.get("cand.begin", {})
    execs = per.get("cand.exec", {})
    slowest = max(runtimes, key=runtimes.get)
    picks = {"first": min(begins, key=begins.get), "slowest": slowest,
             "last": max(execs, key=execs.get)}
    out = {}
    for label, a, b in PHASES:
        if a.endswith("@each"):
            a, b = a[:-5], b[:-5]
            both = [per[b][c] - per[a][c] for c in per.get(a, {}) if c in per.get(b, {})]
            out[label] = median(both)
            continue

        def when(name: str) -> float:
            if "@" in name:
                mark, who = name.split("@")
                return per[mark][picks[who]]
            return at[name]
        out[label] = when(b) - when(a)
    out["total (wall of the whole command)"] = exit_ - spawn
    return out


def demo_traced(tmp: Path, root: Path, tag: str) -> dict:
    """The demo on a terminal, traced; wall, per-phase breakdown, the agents' runtimes."""
    trace = tmp / f"trace-{tag}"
    trace.unlink(missing_ok=True)
    artifacts = tmp / f"art-{tag}"
    run_id = f"bench-{tag}-{time.time_ns()}"
    cmd, extra = forge_cmd(root)
    env = {**forge_env(None, artifacts), **extra, "FORGE_TRACE": str(trace),
           "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    spawn, exit_, wall = on_terminal([*cmd, "run", "--candidates", str(DEMO), "--no-post",
                                      "--run-id", run_id], env, root)
    summary = json.loads((artifacts / run_id / "summary.json").read_text())
    runtimes = {r["candidate_id"]: r["runtime_seconds"] for r in summary["results"]}
    return {"wall_s": wall, "slowest_in_run_s": max(runtimes.values()), "runtimes": runtimes,
            "phases": breakdown(read_trace(trace), spawn, exit_, runtimes)}


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


def seed(tmp: Path) -> dict:
    """The seed's sequential loop over the demo agents, and the slowest one alone.

    A script agent: ``python3 script "<objective>" <output>``, as the seed ran it. A
    project agent (Agent Beta): what the forge does for it, done plainly: its
    requirements installed by pip into a fresh directory (the forge installs them into
    the sandbox's fresh environment, inside the run), then ``python3 -m <module>`` in a
    copy of the project with that directory on the path."""
    manifest = tomllib.loads(DEMO.read_text())
    each = {}
    t0 = now()
    for c in manifest["candidate"]:
        t = now()
        out = str(tmp / f"{c['id']}.md")
        if "script" in c:
            done = run_seed_style(str(DEMO.parent / c["script"]), OBJECTIVE, out)
        else:
            done = _project_seed_style(DEMO.parent / c["path"], c["module"], out, tmp)
        assert done.returncode in (0, 1), done.stderr[-2000:]  # Delta crashes on purpose
        each[c["id"]] = now() - t
    return {"sequential_s": now() - t0, "slowest_s": max(each.values()), "each": each}


def _project_seed_style(source: Path, module: str, out: str,
                        tmp: Path) -> subprocess.CompletedProcess:
    work = tmp / f"project-{time.time_ns()}"
    shutil.copytree(source, work)
    site = work / ".deps"
    if (work / "requirements.txt").is_file():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "--no-input", "--target", str(site),
                        "-r", "requirements.txt"], cwd=work, check=True,
                       capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-m", module, OBJECTIVE, out], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    shutil.rmtree(work, ignore_errors=True)
    return done


def python_alone() -> float:
    """The interpreter's own start and exit (with site), nothing imported."""
    t0 = now()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return now() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compare", type=Path, metavar="DIR",
                    help="another checkout (e.g. the code before a change) run alongside")
    args = ap.parse_args()
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="forge-perf-emb-"))
    sides = {"this": ROOT}
    if args.compare:
        sides["compare"] = args.compare.resolve()
    for root in sides.values():  # byte-code as `make demo` leaves it (Makefile: bytecode)
        subprocess.run([sys.executable, "-m", "compileall", "-q", "dispatcher", "worker"],
                       cwd=root, check=True, stdout=subprocess.DEVNULL)
    startup(tmp)  # warm-up: page cache
    for name, root in sides.items():
        demo_traced(tmp, root, name)
    reps = []
    try:
        for i in range(args.reps):
            rep = {"load": os.getloadavg()[0], "startup": startup(tmp), "seed": seed(tmp),
                   "python_s": python_alone()}
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for name in order:
                rep[name] = demo_traced(tmp, sides[name], name)
            reps.append(rep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(part: str, key: str) -> float:
        return median([r[part][key] for r in reps])

    data = {**info, "reps": reps, "sides": {k: str(v) for k, v in sides.items()},
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "to_candidate_running_s": med("startup", "to_candidate_running_s"),
            "to_task_start_s": med("startup", "to_task_start_s"),
            "startup_wall_s": med("startup", "wall_s"),
            "demo_wall_s": med("this", "wall_s"),
            "demo_slowest_in_run_s": med("this", "slowest_in_run_s"),
            "seed_sequential_s": med("seed", "sequential_s"),
            "seed_slowest_s": med("seed", "slowest_s"),
            "python_alone_s": median([r["python_s"] for r in reps]),
            "target_startup_s": 1.5, "aim_startup_s": 0.7}
    data["demo_vs_loop"] = median([r["this"]["wall_s"] / r["seed"]["sequential_s"]
                                   for r in reps])
    data["demo_minus_slowest_s"] = median([r["this"]["wall_s"] - r["seed"]["slowest_s"]
                                           for r in reps])
    rows = [
        ["forge run -> run_candidate starts s", data["to_task_start_s"]],
        ["forge run -> candidate script running s (target <= 1.5)",
         data["to_candidate_running_s"]],
        ["one trivial candidate: whole command s", data["startup_wall_s"]],
        ["demo (5 agents): whole forge run s", data["demo_wall_s"]],
        ["demo: slowest agent inside the run s", data["demo_slowest_in_run_s"]],
        ["seed: 5 agents sequential s", data["seed_sequential_s"]],
        ["seed: slowest agent alone s", data["seed_slowest_s"]],
        ["demo / seed loop, paired (must <= 1.0)", data["demo_vs_loop"]],
        ["demo - slowest alone, paired s (aim <= 0.3)", data["demo_minus_slowest_s"]],
    ]
    if "compare" in sides:
        data["compare_demo_wall_s"] = med("compare", "wall_s")
        data["compare_vs_loop"] = median([r["compare"]["wall_s"] / r["seed"]["sequential_s"]
                                          for r in reps])
        rows += [["compare: demo whole forge run s", data["compare_demo_wall_s"]],
                 ["compare: demo / seed loop, paired", data["compare_vs_loop"]]]
    loads = [round(r["load"], 2) for r in reps]
    table(f"Embedded mode (median of {args.reps}; load average per rep {loads})",
          ["measure", "value"], rows)

    cols = list(reps[0]["this"]["phases"])
    names = [n for n in sides]
    phase_rows = []
    for c in cols:
        phase_rows.append([c, *[median([r[n]["phases"][c] for r in reps]) for n in names]])
    data["phases"] = {n: {c: median([r[n]["phases"][c] for r in reps]) for c in cols}
                      for n in names}
    phase_rows.append(["python -c pass (for scale)", data["python_alone_s"],
                       *([""] * (len(names) - 1))])
    table("Demo on a terminal: where the wall time goes (s, medians; phases overlap "
          "where candidates run side by side)", ["phase", *names], phase_rows)
    print(f"JSON: {write_json('embedded_startup', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
