"""Daytona concurrency: N one-second candidates in Daytona mode, parallel versus the seed.

Against the loopback Daytona emulator (a subprocess, ``--create-latency 0.3``: every
sandbox takes 0.3 s to create), with the real SDK:

* ``forge``: the distributed path, one ``celery worker -P threads -c 50`` on a private
  redis-server, the chord, the judge, the run directory. A warm-up run first (the SDK
  import and client creation are paid once per worker process), then ``--reps`` runs.
* ``sequential``: the seed's loop, i.e. the same lifecycle (create, upload, exec,
  download, delete) one candidate after another in this process, against the same
  emulator: N x (0.3 + 1 + overhead).

Every process is started here and stopped by its PID. Prints a table; writes JSON to
bench/results/daytona_concurrency.json.

    .venv/bin/python bench/daytona_concurrency.py [-n 50] [--concurrency 50] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, forge_api, machine, median, now, parse_ts, table, write_json  # noqa: E402,I001

from tests.manifests import sleepers  # noqa: E402
from tests.procs import CeleryWorker, RedisServer, forge_env, free_port, stop_process  # noqa: E402

OBJECTIVE = "bench: daytona concurrency"
SDK_ENV = {"DAYTONA_USE_DEPRECATED_POLLING": "true", "NO_PROXY": "127.0.0.1,localhost"}


class Emulator:
    """``tests/daytona_emulator.py`` as a subprocess of its own (own GIL, own CPU)."""

    def __init__(self, api_key: str, create_latency: float, quota_cpu: int | None = None):
        self.api_key, self.create_latency, self.quota_cpu = api_key, create_latency, quota_cpu
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def __enter__(self) -> Emulator:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = tempfile.NamedTemporaryFile(prefix="daytona-emu-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "daytona_emulator.py"), "--port",
             str(self.port), "--create-latency", str(self.create_latency), "--api-key",
             self.api_key, *(["--quota-cpu", str(self.quota_cpu)] if self.quota_cpu else [])],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = now() + 30
        while b"Daytona emulator on" not in Path(self.log.name).read_bytes():
            if self.proc.poll() is not None or now() > deadline:
                self.__exit__()
                raise RuntimeError("emulator did not start: "
                                   + Path(self.log.name).read_text(errors="replace"))
            time.sleep(0.05)
        return self

    def state(self) -> dict:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_admin/state") as r:
            return json.loads(r.read())

    def counters(self, reset: bool = False) -> dict:
        """Creates, refusals and peak alive since the last reset (cheap: no call log)."""
        import json
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/_admin/counters",
                                     method="POST" if reset else "GET")
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.log.close()


class DaytonaCluster:
    """A private redis-server and ``workers`` thread-pool workers with the Daytona env."""

    def __init__(self, concurrency: int, extra_env: dict[str, str], workers: int = 1):
        self.tmp = Path(tempfile.mkdtemp(prefix="forge-dtbench-"))
        self.artifacts = self.tmp / "artifacts"
        self.artifacts.mkdir()
        self.concurrency, self.extra_env, self.n = concurrency, extra_env, workers
        self.redis: RedisServer | None = None
        self.worker: CeleryWorker | None = None
        self.workers: list[CeleryWorker] = []

    def __enter__(self) -> DaytonaCluster:
        try:
            self.redis = RedisServer(self.tmp / "redis").start()
            env = forge_env(self.redis.url, self.artifacts, **self.extra_env)
            for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "FORGE_ARTIFACTS_DIR",
                      *self.extra_env):
                os.environ[k] = env[k]  # before worker.app is imported (forge_api)
            self.workers = [CeleryWorker(env, f"dt{i or ''}", self.tmp, self.concurrency,
                                         "threads") for i in range(self.n)]
            for w in self.workers:
                w.start(wait_ready=False)
            for w in self.workers:
                w.wait_ready(120)
            self.worker = self.workers[0]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def forge_run(manifest: Path, artifacts: Path, n: int) -> dict:
    runner, _ = forge_api()
    t0 = now()
    plan = runner.prepare(OBJECTIVE, True, candidates=str(manifest),
                          artifacts_dir=str(artifacts), post=False)
    assert plan.run.execution_mode == "daytona", plan.run.notes
    result = runner.execute(plan)
    wall = now() - t0
    bad = [r.error_message for r in result.results if not r.success]
    assert not bad and len(result.results) == n, bad[:3]
    assert result.sandboxes_alive == 0, result.sandboxes_alive
    starts = [parse_ts(r.started_at) for r in result.results]
    ends = [parse_ts(r.finished_at) for r in result.results]
    runtimes = sorted(r.runtime_seconds for r in result.results)
    return {"wall_s": wall, "first_start_to_last_finish_s": max(ends) - min(starts),
            "start_spread_s": max(starts) - min(starts),
            "lifecycle_median_s": median(runtimes), "lifecycle_max_s": runtimes[-1],
            "sandboxes": len({r.sandbox_id for r in result.results})}


def sequential(manifest: Path, n: int) -> dict:
    """The seed's loop: one lifecycle after another, one process, the same emulator."""
    from dispatcher.manifest import load_manifest
    from worker.lifecycle import run_lifecycle
    from worker.records import CandidateTask
    from worker.sandbox import get_backend

    backend = get_backend("daytona")
    backend.client()  # the SDK import and client, paid before the clock as on the workers
    per = []
    t0 = now()
    for c in load_manifest(manifest).candidates[:n]:
        task = CandidateTask(run_id="bench-seq", candidate_id=c.id, name=c.name,
                             script_name=c.script_name, script=c.script,
                             script_sha256=c.script_sha256, objective=OBJECTIVE,
                             execution_mode="daytona", timeout=60)
        result = run_lifecycle(backend, task, lambda _m: None)
        assert result.success, result.error_message
        per.append(result.runtime_seconds)
    return {"wall_s": now() - t0, "per_candidate_median_s": median(per), "n": len(per)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--create-latency", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sequential-n", type=int, default=None,
                    help="candidates in the sequential baseline (default: all N)")
    args = ap.parse_args()
    info = machine()
    key = f"bench-key-{secrets.token_hex(8)}"
    with Emulator(key, args.create_latency) as emu:
        extra = {"DAYTONA_API_KEY": key, "DAYTONA_API_URL": emu.url, **SDK_ENV,
                 # an unlimited emulator: the budget is not what this bench measures
                 "FORGE_DAYTONA_MAX_SANDBOXES": str(max(args.n, args.concurrency))}
        with DaytonaCluster(args.concurrency, extra) as cluster:
            manifest = sleepers(cluster.tmp / "cands", args.n, args.seconds)
            t0 = now()
            warm = forge_run(manifest, cluster.artifacts, args.n)  # cold worker: SDK import
            warm["cold_wall_s"] = now() - t0
            reps = [forge_run(manifest, cluster.artifacts, args.n) for _ in range(args.reps)]
            seq_n = args.sequential_n or args.n
            seq = sequential(manifest, seq_n)
            state = emu.state()
            for k in ("DAYTONA_API_KEY", "DAYTONA_API_URL"):
                os.environ.pop(k, None)
    wall = median([r["wall_s"] for r in reps])
    span = median([r["first_start_to_last_finish_s"] for r in reps])
    seq_full = seq["wall_s"] * args.n / seq_n
    data = {
        **info, "n": args.n, "seconds": args.seconds, "create_latency_s": args.create_latency,
        "pool": "threads", "concurrency": args.concurrency, "warmup": warm, "reps": reps,
        "forge_wall_s": wall, "forge_span_s": span, "sequential": seq,
        "sequential_wall_s": seq_full, "speedup": seq_full / wall,
        "target_s": 3.0, "aim_s": 2.0, "meets_target": wall <= 3.0,
        "emulator": {"created": len(state["created"]), "deleted": len(state["deleted"]),
                     "alive": len(state["alive"])},
    }
    table(f"Daytona concurrency: {args.n} x {args.seconds:g}s candidates, create latency "
          f"{args.create_latency:g}s, 1 worker -P threads -c {args.concurrency} "
          f"(median of {args.reps})",
          ["measure", "value"],
          [["forge wall s (dispatch to summary; target <= 3, aim <= 2)", wall],
           ["forge first start to last finish s", span],
           ["forge cold run s (first run: SDK import in the worker)", warm["cold_wall_s"]],
           ["one lifecycle, median s (under 50-way load)",
            median([r["lifecycle_median_s"] for r in reps])],
           [f"sequential (seed loop) s, {seq_n} measured", seq["wall_s"]],
           ["sequential per candidate s", seq["per_candidate_median_s"]],
           [f"sequential for {args.n} s", seq_full],
           ["speedup", seq_full / wall],
           ["sandboxes alive at the end", len(state["alive"])]])
    print(f"JSON: {write_json('daytona_concurrency', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
