"""Shared pieces of the benchmarks: a private Redis + workers, timing, tables, JSON.

Every process is started here and stopped by its PID (tests/procs.py). The forge side
is driven through the Python API in this process: the broker URL is put into the
environment before ``worker.app`` is first imported, so import the dispatcher only
through :func:`forge_api` after :class:`Cluster` started.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.procs import CeleryWorker, RedisServer, forge_env  # noqa: E402

RESULTS = ROOT / "bench" / "results"

# Scratch space (Redis, candidates, artifacts, the baselines' output), for both sides
# alike, beside the real artifacts directory: the disk a run writes to by default.
SCRATCH = ROOT / "artifacts" / ".bench-tmp"
SCRATCH.mkdir(parents=True, exist_ok=True)
tempfile.tempdir = str(SCRATCH)
os.environ["TMPDIR"] = str(SCRATCH)
TRIVIAL = ("import sys\n"
           "open(sys.argv[2], 'w').write('# hi\\n\\nobjective: ' + sys.argv[1] + '\\n')\n")


class Cluster:
    """A private redis-server and ``workers`` celery worker processes (prefork)."""

    def __init__(self, workers: int = 2, concurrency: int = 4, pool: str = "prefork",
                 extra_env: dict[str, str] | None = None, start_workers: bool = True):
        self.tmp = Path(tempfile.mkdtemp(prefix="forge-perf-"))
        self.artifacts = self.tmp / "artifacts"
        self.artifacts.mkdir()
        self.n, self.concurrency, self.pool = workers, concurrency, pool
        self.extra_env = dict(extra_env or {})
        self.start_workers_now = start_workers
        self.redis: RedisServer | None = None
        self.workers: list[CeleryWorker] = []

    @property
    def slots(self) -> int:
        return self.n * self.concurrency

    def __enter__(self) -> Cluster:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> Cluster:
        self.redis = RedisServer(self.tmp / "redis").start()
        self.env = forge_env(self.redis.url, self.artifacts, **self.extra_env)
        for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "FORGE_ARTIFACTS_DIR"):
            os.environ[k] = self.env[k]
        for k, v in self.extra_env.items():
            os.environ[k] = v
        if self.start_workers_now:
            self.start_workers()
        return self

    def start_workers(self) -> None:
        self.workers = [CeleryWorker(self.env, f"b{i + 1}", self.tmp, self.concurrency, self.pool)
                        for i in range(self.n)]
        for w in self.workers:
            w.start(wait_ready=False)
        for w in self.workers:
            w.wait_ready(120)

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def worker_rss_mb(self) -> dict[str, float]:
        """Peak RSS (VmHWM) of every worker process and its pool children, in MiB."""
        out = {}
        for w in self.workers:
            for pid in [w.proc.pid, *w.child_pids()]:
                out[f"{w.name}:{pid}"] = _vm_hwm(pid)
        return out


def cpu_times(pid: int) -> tuple[float, float]:
    """(own CPU s, CPU s of its waited-for children) of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / tick, (cutime + cstime) / tick


class CpuMeter:
    """CPU seconds used by each part of the cluster between ``start()`` and ``stop()``.

    On a 2-core machine a run is CPU-bound, so CPU per candidate says where time goes:
    the worker main processes (Celery's consumer), the pool processes (the task code),
    the sandboxes (bwrap, slirp4netns, the candidates: waited-for children of the pool
    processes), redis-server, and this dispatcher process.
    """

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    def _snap(self) -> dict[str, float]:
        out = {"worker main": 0.0, "pool processes": 0.0, "sandboxes + candidates": 0.0}
        for w in self.cluster.workers:
            out["worker main"] += cpu_times(w.proc.pid)[0]
            for pid in w.child_pids():
                own, children = cpu_times(pid)
                out["pool processes"] += own
                out["sandboxes + candidates"] += children
        out["redis-server"] = sum(cpu_times(self.cluster.redis.proc.pid))
        t = os.times()
        out["dispatcher (this process)"] = t.user + t.system
        return out

    def start(self) -> None:
        self.before = self._snap()

    def stop(self) -> dict[str, float]:
        after = self._snap()
        return {k: round(after[k] - self.before[k], 3) for k in after}


def _vm_hwm(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def forge_api():
    """The dispatcher's Python API (imported after the broker URL is in the env)."""
    from dispatcher import dispatch, runner

    return runner, dispatch


def body_timings(run_id: str) -> dict:
    """The chord body's own phase timings for a finished run (``collect_results`` returns
    them as ``body_timings``); empty when its result is gone."""
    from worker.app import app
    from worker.keys import body_task_id

    return (app.AsyncResult(body_task_id(run_id)).result or {}).get("body_timings", {})


def parse_ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict:
    load = os.getloadavg()
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_at_start": [round(x, 2) for x in load]}


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def table(title: str, columns: list[str], rows: list[list]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    Console(width=140).print(t)


def run_seed_style(script: str, objective: str, output: str,
                   python: str = sys.executable) -> subprocess.CompletedProcess:
    """Exactly what the seed did per candidate: a plain subprocess, no sandbox."""
    return subprocess.run([python, script, objective, output], capture_output=True,
                          text=True, timeout=120)


def sandbox_python(directory: Path) -> str:
    """The interpreter environment a local sandbox gives a candidate (the base interpreter
    without the host's site-packages), made under ``directory`` for a baseline to use."""
    from worker.sandbox.local.pyenv import make_python_env

    env = directory / "python"
    if not env.exists():
        make_python_env(str(env), None)
    return str(env / "bin" / "python3")


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat): every process, the
    kernel's work for them included, which per-process accounting misses (namespace
    teardown, reaped grandchildren)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def now() -> float:
    return time.monotonic()


class TreeCpu:
    """CPU of this benchmark's own process tree: a cpuacct cgroup (cgroup v1) made for it,
    which every process it starts afterwards inherits (Redis, workers, pool processes,
    bwrap, slirp4netns, candidates; the sandboxes' own cgroups nest inside it).

    On a machine shared with other work, /proc/stat's busy time counts theirs too; this
    counts only ours. It misses what the kernel does for us in its own threads (a
    network namespace's teardown runs in a kworker), which /proc/stat includes: report
    both. ``usage()`` is None where no cpuacct hierarchy is writable.
    """

    ROOT = "/sys/fs/cgroup/cpuacct"

    def __init__(self):
        self.path: str | None = os.path.join(self.ROOT, f"forge-bench-{os.getpid()}")
        try:
            os.mkdir(self.path)
            with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        except OSError:
            self.close()
            self.path = None

    def usage(self) -> float | None:
        if self.path is None:
            return None
        with open(os.path.join(self.path, "cpuacct.usage")) as fh:
            return int(fh.read()) / 1e9

    def close(self) -> None:
        """Back to the root group; remove ours once our processes have left it."""
        if self.path is None:
            return
        try:
            with open(os.path.join(self.ROOT, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        except OSError:
            pass
        for _ in range(50):
            for sub in sorted(Path(self.path).glob("**/"), reverse=True):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
            if not os.path.exists(self.path):
                break
            time.sleep(0.1)
        self.path = None
