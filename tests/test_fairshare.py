"""Fair share of the worker machine between local sandboxes, and the CPU time they used.

* Each sandbox cgroup gets the same CPU weight: a CPU hog with many processes next to a
  well-behaved single-process candidate leaves the latter about 1/N of the CPU the two
  get (N = 2 candidates). Positive control: without per-sandbox cgroups, the same pair
  on the same machine gives the well-behaved one about 1/(processes) instead. (The hog
  puts each process in a session of its own: where the kernel groups tasks by session
  (autogroup), that is how a candidate would claim more of the machine without cgroups.)
* ``cpus`` caps a candidate's CPU (positive control: the same candidate uncapped).
* ``cpu_seconds`` is recorded beside the wall time, from the cgroup or the rusage.
* ``exclusive``: at most one candidate per core at once, across processes, and a slot
  frees itself when its holder dies.

Candidates run through the real lifecycle and bubblewrap sandboxes, at the same time on
threads started behind a barrier. These tests FAIL without bubblewrap or a writable cpu
cgroup tree (the machine the suite runs on has one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from worker.lifecycle import run_lifecycle
from worker.records import CandidateResult, CandidateTask, Limits, sha256_text
from worker.sandbox import slots
from worker.sandbox.local import LocalBackend, bwrap, cgroups

# Every test starts processes (sandboxes and forked CPU hogs); tests/markers.py.
pytestmark = pytest.mark.processes

WINDOW = 3.0  # seconds each busy candidate runs
HOG_PROCS = 8

BUSY = """
import json, os, resource, sys, time

CONFIG = json.loads(__CONFIG__)

def spin(seconds):
    # busy for seconds of wall time, or of this process's CPU time ("cpu": the same work
    # however busy the machine is)
    clock = time.process_time if CONFIG["until"] == "cpu" else time.monotonic
    end = clock() + seconds
    while clock() < end:
        pass

start, start_cpu = time.monotonic(), time.process_time()
kids = []
for _ in range(CONFIG["procs"] - 1):
    pid = os.fork()
    if pid == 0:
        os.setsid()  # a session, i.e. a scheduler autogroup, of its own per process
        spin(CONFIG["seconds"])
        os._exit(0)
    kids.append(pid)
spin(CONFIG["seconds"])
for pid in kids:
    os.waitpid(pid, 0)
end = time.monotonic()
kids_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
kids_cpu = kids_cpu.ru_utime + kids_cpu.ru_stime
json.dump({"start": start, "end": end, "own_cpu": time.process_time(),
           "cpu": time.process_time() + kids_cpu,
           "window_cpu": time.process_time() - start_cpu + kids_cpu}, open(sys.argv[2], "w"))
"""

SLEEP = """
import json, sys, time
start = time.monotonic()
time.sleep(__SECONDS__)
json.dump({"start": start, "end": time.monotonic()}, open(sys.argv[2], "w"))
"""


def require() -> None:
    probe = bwrap.probe()
    assert probe.ok, f"bubblewrap unavailable ({probe.reason}); fix: apt-get install bubblewrap"
    assert cgroups.controller_base("cpu") is not None, (
        "no writable cpu cgroup here: the fair share cannot be shown (run as root, or with a "
        "delegated cgroup v2 subtree)")


def task(cid: str, script: str, *, limits: Limits = Limits(), exclusive: bool = False,
         timeout: int = 60) -> CandidateTask:
    script = textwrap.dedent(script)
    return CandidateTask(run_id="r-fair", candidate_id=cid, name=cid, script_name="s.py",
                         script=script, script_sha256=sha256_text(script), objective="o",
                         timeout=timeout, network=False, limits=limits, exclusive=exclusive)


def busy(cid: str, procs: int, seconds: float = WINDOW, until: str = "wall",
         **kw) -> CandidateTask:
    config = json.dumps({"procs": procs, "seconds": seconds, "until": until})
    return task(cid, BUSY.replace("__CONFIG__", repr(config)), **kw)


def together(tasks: list[CandidateTask], backend: LocalBackend | None = None
             ) -> list[CandidateResult]:
    """Run every task at once, each on its own thread released by one barrier."""
    backend = backend or LocalBackend()
    gate = threading.Barrier(len(tasks))

    def one(t: CandidateTask) -> CandidateResult:
        gate.wait()
        return run_lifecycle(backend, t, lambda _m: None)

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        results = list(pool.map(one, tasks))
    for r in results:
        assert r.success, (r.candidate_id, r.error_message, r.output[-1000:])
    return results


def own_cpu(r: CandidateResult) -> float:
    """The CPU seconds the candidate counted itself (its processes' rusage)."""
    return json.loads(r.artifact_content)["cpu"]


def share(results: list[CandidateResult]) -> float:
    """The well-behaved candidate's part of the CPU the pair used, as they counted it."""
    good, hog = (own_cpu(r) for r in results)
    return good / (good + hog)


def test_a_cpu_hog_leaves_its_neighbour_a_fair_share(monkeypatch):
    require()
    pair = [busy("good", 1), busy("hog", HOG_PROCS)]
    weighted = together(pair)
    assert all("cpu equal weight" in r.isolation for r in weighted), weighted[0].isolation
    monkeypatch.setenv("FORGE_NO_CGROUPS", "1")  # positive control: no per-sandbox cgroups
    unweighted = together(pair)
    assert all("cpu unweighted" in r.isolation for r in unweighted), unweighted[0].isolation
    fair, unfair = share(weighted), share(unweighted)
    print(f"\nwell-behaved share of the pair's CPU: {fair:.2f} with equal weights, "
          f"{unfair:.2f} without (1/N = 0.50, 1/processes = {1 / (HOG_PROCS + 1):.2f}); "
          f"its CPU over a {WINDOW:.0f} s window: {own_cpu(weighted[0]):.2f} s vs "
          f"{own_cpu(unweighted[0]):.2f} s; the hog's: {own_cpu(weighted[1]):.2f} s vs "
          f"{own_cpu(unweighted[1]):.2f} s")
    for r in weighted:  # the cgroup's figure agrees with the candidate's own count
        assert abs(r.cpu_seconds - own_cpu(r)) <= 0.15 * own_cpu(r) + 0.3, (
            r.candidate_id, r.cpu_seconds, own_cpu(r))
    assert fair >= 0.4, f"well-behaved candidate got {fair:.2f} of the CPU with weights"
    assert unfair <= 0.25, f"control: without weights it still got {unfair:.2f}"
    assert fair >= 2 * unfair


def test_cpu_cap():
    """``cpus = 0.05``: burning 0.1 CPU second takes the capped candidate ~2 s; the same
    candidate uncapped, side by side, does it several times faster (on a machine less
    than ~10x oversubscribed)."""
    require()
    capped, free = together([busy("capped", 1, 0.1, "cpu", limits=Limits(cpus=0.05)),
                             busy("free", 1, 0.1, "cpu")])
    assert "cpu cap 0.05" in capped.isolation, capped.isolation

    def cores(r: CandidateResult) -> float:  # over its own spinning window
        report = json.loads(r.artifact_content)
        return report["window_cpu"] / (report["end"] - report["start"])

    capped_cores, free_cores = cores(capped), cores(free)
    print(f"\ncapped at 0.05 core: {capped_cores:.3f} cores; uncapped: {free_cores:.2f} cores")
    assert capped_cores <= 0.075, capped_cores
    assert free_cores >= 2 * capped_cores, f"control: uncapped got only {free_cores:.2f} cores"


def test_cpu_time_is_recorded_beside_wall_time(monkeypatch):
    """Two processes spinning 1 s each use ~2 CPU seconds; a sleeper uses ~none. The
    figure comes from the sandbox's cgroup; without cgroups from the rusage where that
    is complete (the unisolated fallback), and is unknown (None) for bubblewrap."""
    require()
    spinner = busy("spinner", 2, 0.5, "cpu")  # two processes burning 0.5 CPU s each
    sleeper = task("sleeper", SLEEP.replace("__SECONDS__", "1.0"))
    spun, slept = together([spinner, sleeper])
    assert spun.cpu_seconds >= 0.95, spun.cpu_seconds
    assert abs(spun.cpu_seconds - own_cpu(spun)) <= 0.3, (spun.cpu_seconds, own_cpu(spun))
    assert own_cpu(spun) >= json.loads(spun.artifact_content)["own_cpu"] + 0.45  # the child
    assert slept.cpu_seconds < 0.3 and slept.runtime_seconds >= 1.0, slept
    monkeypatch.setenv("FORGE_NO_CGROUPS", "1")
    spun, slept = together([spinner, sleeper])
    assert spun.cpu_seconds is None and slept.cpu_seconds is None
    monkeypatch.setenv("FORGE_SANDBOX", "plain")
    bwrap.probe.cache_clear()
    try:
        spun, slept = together([spinner, sleeper])
    finally:
        monkeypatch.delenv("FORGE_SANDBOX")
        bwrap.probe.cache_clear()
    assert spun.isolation.startswith("NONE:")
    assert spun.cpu_seconds >= 0.95, spun.cpu_seconds
    assert abs(spun.cpu_seconds - own_cpu(spun)) <= 0.3, (spun.cpu_seconds, own_cpu(spun))
    assert slept.cpu_seconds < 0.3


def _overlap(results: list[CandidateResult]) -> int:
    spans = [json.loads(r.artifact_content) for r in results]
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    most = now = 0
    for _t, step in events:
        now += step
        most = max(most, now)
    return most


def test_exclusive_runs_at_most_one_candidate_per_core(tmp_path):
    require()
    cores = slots.machine_cores()
    n = 2 * cores + 1
    backend = LocalBackend()
    backend.slots_dir = str(tmp_path / "cores")
    sleepers = [task(f"s{i}", SLEEP.replace("__SECONDS__", "0.6")) for i in range(n)]
    free = together(sleepers, backend)
    excl = together([replace(t, exclusive=True) for t in sleepers], backend)
    print(f"\nat most {_overlap(excl)} at once with exclusive on {cores} cores "
          f"({_overlap(free)} without)")
    assert _overlap(free) > cores  # control: they do run together without it
    assert _overlap(excl) <= cores
    # Waiting for a core is not the candidate's time: every runtime is about one run.
    waited = [r.timings.get("reserve", 0) for r in excl]
    assert max(waited) > 0.5, waited
    assert all(r.runtime_seconds < 0.6 + max(waited) for r in excl)
    assert all(r.runtime_seconds < 3 * 0.6 + 1 for r in excl), [r.runtime_seconds for r in excl]


HOLD_SLOTS = """
import sys
sys.path.insert(0, {repo!r})
from worker.sandbox import slots
held = [slots.acquire({d!r}, {n}) for _ in range({n})]
print("held", flush=True)
sys.stdin.read()
"""


def test_a_dead_holder_frees_its_core(tmp_path):
    """Slots are shared between processes, and a process killed with SIGKILL holds none."""
    d, n = str(tmp_path / "cores"), 2
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SLOTS.format(repo=repo, d=d, n=n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(slots.acquire(d, n)), daemon=True)
        waiter.start()
        waiter.join(timeout=1.0)
        assert not got, "a slot was taken while another process held them all"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        waiter.join(timeout=10)
        assert got, "the killed holder's slot was not freed"
        got[0].release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_isolation_line_states_the_share(monkeypatch):
    require()
    t = task("c", SLEEP.replace("__SECONDS__", "0"))
    r = run_lifecycle(LocalBackend(), t, lambda _m: None)
    assert r.success and "cpu equal weight" in r.isolation and "cpu cap" not in r.isolation
    r = run_lifecycle(LocalBackend(), replace(t, limits=Limits(cpus=1.5)), lambda _m: None)
    assert r.success and "cpu equal weight, cpu cap 1.5" in r.isolation, r.isolation
    monkeypatch.setenv("FORGE_NO_CGROUPS", "1")
    r = run_lifecycle(LocalBackend(), replace(t, limits=Limits(cpus=1.5)), lambda _m: None)
    assert r.success and "cpu unweighted (no cap)" in r.isolation, r.isolation
