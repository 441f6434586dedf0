"""Prometheus metrics, scraped from a real prefork worker while real runs go.

One redis-server, one worker (``-c 2``, pool processes recycled every 2 tasks so the
sums must survive processes that left), a Discord webhook and the Daytona emulator.
A local competition of 4 candidates × 1.5 s on 2 slots is scraped throughout: sandboxes
alive and queue depth move during it and settle after; a Daytona competition with one
sandbox slot for two candidates makes one wait.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.daytona_emulator import DaytonaEmulator
from tests.discord_server import DiscordServer
from tests.manifests import write_manifest
from tests.procs import ROOT, CeleryWorker, RedisServer, call_task, forge_env, free_port

# Every test starts processes (redis-server, celery workers, sandboxes); tests/markers.py.
pytestmark = pytest.mark.processes

SLOW = """import sys, time
time.sleep(1.5)
open(sys.argv[2], "w").write("# Post\\n\\n**Event** " + sys.argv[1] + "\\n")
"""
HOLD = SLOW.replace("1.5", "4")  # holds the one Daytona slot while the other starts
SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format → {(name, labels): value}."""
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples, name: str, **labels) -> float | None:
    want = frozenset((k, str(v)) for k, v in labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    return sum(found) if found else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    with DiscordServer() as discord, DaytonaEmulator(api_key="metrics-key") as emulator:
        redis = RedisServer(tmp / "redis").start()
        conf = tmp / "conf"
        write_manifest(conf / "local", {f"c{i}": SLOW for i in range(4)},
                       header='judge = "tests.obs_judges:Wins"')
        write_manifest(conf / "cloud", {"d1": HOLD, "d2": HOLD},
                       header='judge = "tests.obs_judges:Wins"')
        (conf / "forge.toml").write_text(
            '[[competition]]\nname = "metered"\nobjective = "Metered run"\n'
            'candidates = "local/candidates.toml"\ntimeout = 30\npost = true\n\n'
            '[[competition]]\nname = "cloudwait"\nobjective = "Cloud run"\n'
            'candidates = "cloud/candidates.toml"\ntimeout = 30\nexecution = "daytona"\n'
            'max_sandboxes = 1\n', encoding="utf-8")
        port = free_port()
        metrics_dir = tmp / "metrics-files"
        env = forge_env(redis.url, tmp / "artifacts", FORGE_METRICS_PORT=str(port),
                        FORGE_METRICS_ADDR="127.0.0.1", FORGE_METRICS_DIR=str(metrics_dir),
                        FORGE_COMPETITIONS=str(conf / "forge.toml"),
                        DISCORD_WEBHOOK_URL=discord.url, DAYTONA_API_KEY="metrics-key",
                        DAYTONA_API_URL=emulator.url, DAYTONA_USE_DEPRECATED_POLLING="true",
                        NO_PROXY="127.0.0.1,localhost")
        worker = CeleryWorker(env, "metrics", tmp, concurrency=2,
                              extra_args=("--max-tasks-per-child", "2")).start()
        try:
            yield SimpleNamespace(redis=redis, worker=worker, discord=discord, tmp=tmp,
                                  url=f"http://127.0.0.1:{port}/metrics", dir=metrics_dir,
                                  emulator=emulator)
        finally:
            worker.stop()
            redis.stop()


def scrape(cluster) -> tuple[str, dict]:
    with urllib.request.urlopen(cluster.url, timeout=10) as resp:
        text = resp.read().decode()
    return text, parse(text)


def run_and_watch(cluster, competition: str, timeout: float = 90):
    """Start a scheduled competition; scrape every 0.2 s until it finished."""
    t0 = time.time()
    started = call_task(cluster.redis, "dispatcher.scheduling.start_competition", competition,
                        "now")
    assert started["status"] == "dispatched", started
    summary = cluster.tmp / "artifacts" / started["run_id"] / "summary.json"
    seen = []
    deadline = time.monotonic() + timeout
    while not summary.exists():
        assert time.monotonic() < deadline, cluster.worker.logtext()[-3000:]
        seen.append(scrape(cluster))
        time.sleep(0.2)
    # The body's postrun counts the run after the run directory is written: wait for
    # that count, not for a fixed time (a loaded machine can take longer).
    after = scrape(cluster)
    while value(after[1], "forge_runs_finished_total", competition=competition) is None:
        assert time.monotonic() < deadline + 30, "the finished run was never counted"
        time.sleep(0.1)
        after = scrape(cluster)
    return t0, started["run_id"], seen, after


def test_metrics_move_during_a_distributed_run_and_are_right_after(cluster):
    before = scrape(cluster)[1]
    assert value(before, "forge_runs_started_total") is None  # nothing counted yet
    assert value(before, "forge_broker_up") == 1.0
    t0, run_id, seen, (text, after) = run_and_watch(cluster, "metered")
    during = [s for _, s in seen]
    # While it ran: two sandboxes alive at once (2 slots), candidates queued behind
    # them, the run started but not finished.
    assert max(value(s, "forge_sandboxes_alive", backend="local") or 0 for s in during) == 2
    assert max(value(s, "forge_queue_depth", queue="celery") or 0 for s in during) >= 1
    assert any(value(s, "forge_runs_started_total", competition="metered") == 1
               and value(s, "forge_runs_finished_total") is None for s in during)
    # After it: every figure settled.
    assert value(after, "forge_runs_started_total", competition="metered",
                 execution_mode="local") == 1
    assert value(after, "forge_runs_finished_total", competition="metered",
                 outcome="winner") == 1
    assert value(after, "forge_candidates_finished_total", outcome="succeeded") == 4
    for phase in ("create", "upload", "exec", "collect", "delete", "task"):
        assert value(after, "forge_candidate_phase_seconds_count", phase=phase,
                     execution_mode="local") == 4, phase
    exec_sum = value(after, "forge_candidate_phase_seconds_sum", phase="exec")
    assert 4 * 1.5 <= exec_sum < 4 * 1.5 * 3, exec_sum
    assert value(after, "forge_candidate_phase_seconds_bucket", phase="exec", le="1.0") == 0
    assert value(after, "forge_candidate_phase_seconds_bucket", phase="exec", le="+Inf") == 4
    assert value(after, "forge_sandboxes_alive", backend="local") == 0
    assert value(after, "forge_queue_depth", queue="celery") == 0
    assert value(after, "forge_discord_posts_total", outcome="posted") == 1
    assert len(cluster.discord.delivered) >= 1
    assert value(after, "forge_schedule_firings_total", competition="metered",
                 status="dispatched") == 1
    last = value(after, "forge_competition_last_success_timestamp_seconds",
                 competition="metered")
    assert last is not None and t0 <= last <= time.time()
    # Pool processes were recycled (2 tasks each) and their counts are still in the sum.
    pids = {m.group(1) for f in os.listdir(cluster.dir)
            if (m := re.search(r"_(\d+)\.db$", f))}
    assert len(pids) >= 3, sorted(os.listdir(cluster.dir))
    (cluster.tmp.parent / "scrape-during-run.txt").write_text(
        "\n".join(line for line in seen[len(seen) // 2][0].splitlines()
                  if line.startswith("forge_")))  # kept for the report


def test_a_wait_for_a_sandbox_slot_is_counted(cluster):
    import threading

    from worker.keys import waiter_run_key

    # An order of events, not a race against the clock: the sandbox that got the one
    # slot does not start its command until the other candidate waits in the budget
    # (on a loaded machine the second pool process's SDK import could otherwise outlast
    # the first candidate, and nobody would wait).
    client = cluster.redis.client()

    def release_when_one_waits() -> None:
        deadline = time.monotonic() + 90
        while not client.hlen(waiter_run_key()) and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.emulator.release_execs()

    cluster.emulator.hold_execs()
    releaser = threading.Thread(target=release_when_one_waits, daemon=True)
    releaser.start()
    try:
        _, run_id, seen, (_, after) = run_and_watch(cluster, "cloudwait")
    finally:
        cluster.emulator.release_execs()
        releaser.join(5)
    assert max(value(s, "forge_sandboxes_alive", backend="daytona") or 0
               for _, s in seen) == 1  # one slot: never two at once
    # Two candidates, one slot: exactly one had to wait, and its wait was measured.
    assert value(after, "forge_sandbox_slot_waits_total", backend="daytona") == 1
    assert value(after, "forge_sandbox_slot_wait_seconds_count", backend="daytona") == 1
    waited = value(after, "forge_sandbox_slot_wait_seconds_sum", backend="daytona")
    assert 0.3 <= waited < 30, waited
    assert value(after, "forge_candidates_finished_total", execution_mode="daytona",
                 outcome="succeeded") == 2
    assert value(after, "forge_sandboxes_alive", backend="daytona") == 0
    assert value(after, "forge_runs_finished_total", competition="cloudwait",
                 outcome="winner") == 1
    assert value(after, "forge_runs_started_total") == 2  # both runs, each once


KILLED = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Gauge
Gauge("forge_sandboxes_alive", "x", ["backend"], multiprocess_mode="livesum").labels(
    "local").inc(3)
os._exit(0)  # like a SIGKILLed pool process: no worker_process_shutdown
"""


def test_a_dead_process_sandboxes_leave_the_gauge(tmp_path):
    """A pool process that died without saying so: its live gauge file is dropped at
    the next scrape (its PID is gone), while a live process's stays."""
    from worker.observability.metrics import _Collector

    def killed_process() -> str:
        subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        [new] = set(os.listdir(tmp_path)) - known
        known.add(new)
        return new

    known: set[str] = set()
    alive = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    (tmp_path / killed_process()).rename(alive)  # its values, under a live PID (ours)
    known = {alive.name}
    killed_process()  # and one that is really gone

    class NoBroker:  # the collector's broker part is exercised by the cluster tests
        conf = SimpleNamespace(task_default_queue="celery")
        amqp = SimpleNamespace(queues={})

        def connection_for_read(self):
            raise OSError("no broker here")

        backend = None

    families = list(_Collector(NoBroker(), str(tmp_path)).collect())
    gauge = next(f for f in families if f.name == "forge_sandboxes_alive")
    assert [s.value for s in gauge.samples] == [3.0]  # the live one's 3, not 6
    assert sorted(os.listdir(tmp_path)) == [alive.name]
    up = next(f for f in families if f.name == "forge_broker_up")
    assert [s.value for s in up.samples] == [0.0]


def test_deploy_scrape_config_targets_the_workers_metrics_port():
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    worker_env = compose["services"]["worker"]["environment"]
    port = int(str(worker_env["FORGE_METRICS_PORT"]).split(":-")[-1].rstrip("}"))
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    dns = jobs["dream-foundry-workers"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"] and dns["port"] == port and dns["type"] == "A"
    service = compose["services"]["prometheus"]
    assert any(v.endswith(":/etc/prometheus/prometheus.yml:ro") and
               v.startswith("./deploy/prometheus.yml") for v in service["volumes"])
    assert Path(ROOT / "deploy" / "prometheus.yml").is_file()
