"""Issue 17's fixed costs, as behaviour: what an embedded run does not load, the phase
tracer, a cgroup join beside the network set-up, the wait woken by a finished body.

Speed itself is measured in bench/ (embedded_startup.py, parallel_speedup.py,
overhead.py), never asserted here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.manifests import FIXTURES, write_manifest
from tests.procs import ROOT, forge_env

ECHO = (FIXTURES / "basic" / "echo.py").read_text()

# In order, every phase bench/embedded_startup.py's breakdown reads from a traced run.
PHASES = ["cli.main", "planned", "worker.starting", "worker.ready", "published",
          "cand.begin", "cand.create", "cand.upload", "cand.exec", "cand.delete",
          "body.entered", "body.scored", "body.written", "body.stored", "result",
          "worker.stopped", "display.closed", "printed"]


def _forge(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.processes
def test_a_traced_run_stamps_every_phase_in_order(tmp_path):
    manifest = write_manifest(tmp_path / "c", {"echo": ECHO})
    trace = tmp_path / "trace"
    env = forge_env(None, tmp_path / "art", FORGE_TRACE=str(trace))
    done = _forge(["run", "--candidates", str(manifest), "--no-post", "--run-id", "t1"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    labels = [line.split(" ")[2] for line in trace.read_text().splitlines()]
    first = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    assert [p for p in PHASES if p in first] == PHASES, labels  # every phase is there
    # "published" is stamped when publish returns, and the in-process worker may begin the
    # candidate before that: it is ordered only against the worker's start and the body.
    ordered = [p for p in PHASES if p != "published"]
    assert [first[p] for p in ordered] == sorted(first[p] for p in ordered), labels
    assert first["worker.ready"] < first["published"] < first["body.entered"], labels
    assert all(line.split(" ")[3] == "echo" for line in trace.read_text().splitlines()
               if line.split(" ")[2].startswith("cand."))


EMBEDDED_IMPORTS = """
import json, sys
from dispatcher import run_forge
r = run_forge("hi", candidates=sys.argv[1], artifacts_dir=sys.argv[2], post=False)
loaded = {m: m in sys.modules for m in ("redis", "celery.backends.redis")}
import celery.backends.redis  # the control: an import shows in sys.modules
loaded["control"] = "redis" in sys.modules
print(json.dumps({"success": r.results[0].success, "loaded": loaded}))
"""


@pytest.mark.processes
def test_an_embedded_run_never_loads_the_redis_client(tmp_path):
    """Its memory backend needs none of it; importing it cost the first candidate ~0.1 s."""
    manifest = write_manifest(tmp_path / "c", {"echo": ECHO})
    done = subprocess.run([sys.executable, "-c", EMBEDDED_IMPORTS, str(manifest),
                           str(tmp_path / "art")], cwd=ROOT, env=forge_env(None, tmp_path),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["success"]
    assert out["loaded"] == {"redis": False, "celery.backends.redis": False, "control": True}


def test_redis_client_tells_the_redis_backend_from_the_memory_one():
    from celery.backends.cache import CacheBackend
    from celery.backends.redis import RedisBackend

    from worker.app import app
    from worker.celery_compat import redis_client

    def is_redis(backend) -> bool:
        return redis_client(backend) is not None

    assert is_redis(RedisBackend(app=app, url="redis://127.0.0.1:1/0"))  # no connection made
    assert not is_redis(CacheBackend(app=app, backend="memory"))
    assert not is_redis(object())


def test_a_cgroup_join_beside_the_network_raises_what_the_join_raised(tmp_path):
    from worker.sandbox.local.cgroups import Cgroups

    none = Cgroups("forge-test-none", 10, 1 << 20, controllers=())
    assert none.add_beside(os.getpid())() is None  # no cgroup: nothing to wait for
    broken = Cgroups("forge-test-broken", 10, 1 << 20, controllers=())
    (tmp_path / "cg" / "cgroup.procs").mkdir(parents=True)  # writing it fails: EISDIR
    broken.dirs = {"pids": str(tmp_path / "cg")}
    with pytest.raises(IsADirectoryError):
        broken.add_beside(os.getpid())()
    ok = Cgroups("forge-test-ok", 10, 1 << 20, controllers=())
    (tmp_path / "ok").mkdir()
    ok.dirs = {"pids": str(tmp_path / "ok")}
    ok.add_beside(4242)()
    assert (tmp_path / "ok" / "cgroup.procs").read_text() == "4242"


@pytest.mark.processes
def test_kill_all_empties_a_real_cgroup_and_tries_cgroup_kill_only_on_v2(monkeypatch):
    """A process and its child in a real per-sandbox cgroup are killed; ``cgroup.kill``
    (v2 only) is written where it exists and not tried on v1, twice per candidate before."""
    from worker.sandbox.local import cgroups as cg

    group = cg.Cgroups(f"forge-test-kill-{os.getpid()}", 50, 256 << 20)
    try:
        assert group.paths(), "no writable cgroup hierarchy (the tests run as root)"
        tried: list[str] = []
        real = cg._try_write
        monkeypatch.setattr(cg, "_try_write",
                            lambda path, text: (tried.append(path), real(path, text))[1])
        # The shell forks only once it is in the group (its read returns after the add).
        proc = subprocess.Popen(["sh", "-c", "read go; sleep 60 & sleep 60"],
                                stdin=subprocess.PIPE, start_new_session=True)
        group.add(proc.pid)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        deadline = time.monotonic() + 10
        while len(group.members()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(group.members()) == 3  # the shell and its two sleeps (control)
        group.kill_all()
        assert group.members() == set()
        assert proc.wait(10) == -signal.SIGKILL
        kills = [p for p in tried if p.endswith("cgroup.kill")]
        v2 = [p for p in group.paths() if cg._is_v2(os.path.dirname(p))]
        assert kills == [os.path.join(p, "cgroup.kill") for p in v2]
    finally:
        group.kill_all()
        group.remove()


def test_the_embedded_wait_wakes_when_a_task_ends_not_at_its_next_poll():
    from celery.signals import task_postrun

    from dispatcher.dispatch import _task_ends

    with _task_ends("no-such-body") as ended:
        assert not ended.is_set()
        sender = threading.Timer(0.05, lambda: task_postrun.send(sender=None))
        sender.start()
        assert ended.wait(5.0)  # set by the signal, long before any 5 s poll
        sender.join()
    ended.clear()
    task_postrun.send(sender=None)  # after the wait: no longer connected
    assert not ended.is_set()


@pytest.mark.processes
def test_the_trace_module_is_inert_without_its_variable(tmp_path):
    env = {**os.environ, "FORGE_TRACE": ""}
    code = ("from worker import trace\ntrace.mark('x')\nprint(trace.enabled())\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={
        **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False" and list(tmp_path.iterdir()) == []
    path = tmp_path / "t"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={
        **env, "PYTHONPATH": str(ROOT), "FORGE_TRACE": str(path)}, capture_output=True,
        text=True, timeout=60)
    assert done.stdout.strip() == "True"
    assert Path(path).read_text().split(" ")[2] == "x\n"


# What the chord body imports itself (worker.rundir comes with worker.tasks).
BODY_MODULES = ("worker.judge.events", "worker.judge.scoring", "worker.standings",
                "worker.report", "worker.discord")
WORKER_INIT = """
import json, sys
from celery.signals import worker_init
from worker.app import app
app.loader.init_worker()  # as a worker starts: the app's modules, with their signal handlers
worker_init.send(sender=None)  # then, in its main process, before it forks its pool
print(json.dumps(sorted(m for m in sys.argv[1:] if m in sys.modules)))
"""


@pytest.mark.processes
@pytest.mark.parametrize("distributed", [True, False])
def test_a_distributed_worker_loads_the_chord_body_before_it_forks(tmp_path, distributed):
    """Its pool processes then inherit the judge, scoring, standings, reports and the
    Discord post, and no chord body imports them after a run's last candidate; an
    embedded worker (no broker: it runs in the dispatcher) loads none of them there."""
    env = forge_env("redis://127.0.0.1:9/0" if distributed else None, tmp_path)
    done = subprocess.run([sys.executable, "-c", WORKER_INIT, *BODY_MODULES], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == (sorted(BODY_MODULES) if distributed else []), loaded


def test_log_lines_under_the_live_table_go_out_as_one_print_per_tick(tmp_path):
    """On a terminal every print redraws the live table (holding the GIL an embedded
    worker shares): the lines of one poll are printed together at its tick, in order,
    and lines still waiting are printed when the display closes."""
    from io import StringIO

    from rich.console import Console

    from dispatcher.console import Progress
    from dispatcher.plan import RunPlan
    from dispatcher.tracker import RunTracker
    from worker.app import app
    from worker.records import CandidateInfo, RunSpec

    spec = RunSpec(run_id="r", objective="o", timestamp="t", execution_mode="local",
                   artifacts_dir=str(tmp_path), candidates=[CandidateInfo(id="a", name="a")])
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    tracker = RunTracker(app, {"a": "task-a"})
    prints: list[int] = []
    real_print = console.print

    def counting_print(*objects, **kwargs):
        prints.append(len(objects))
        return real_print(*objects, **kwargs)

    console.print = counting_print
    with Progress(console, RunPlan(run=spec, tasks=())) as progress:
        assert progress.live is not None  # the positive control: a live table is drawn
        before = len(prints)
        for line in ("one", "two", "three"):
            progress.log("a", line)
        assert len(prints) == before  # nothing printed (nor redrawn) per line
        progress.tick(tracker)
        assert len(prints) == before + 1
        progress.log("a", "four")
    text = out.getvalue()
    assert text.index("[a] one") < text.index("[a] two") < text.index("[a] three") \
        < text.index("[a] four")  # "four" printed on exit, after the others


def test_the_distributed_wait_ends_without_waiting_for_its_listener(redis_server):
    """The listener of the body's result is told to stop, not joined: redis-py 8's
    ``stop()`` would wait out its read timeout (0.5 s at the end of every run)."""
    import redis

    from dispatcher.dispatch import _stop_listening

    client = redis.Redis.from_url(redis_server.url)
    heard = threading.Event()
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(**{"forge-test": lambda _m: heard.set()})
    listener = pubsub.run_in_thread(sleep_time=3, daemon=True)
    try:
        client.publish("forge-test", "x")
        assert heard.wait(10)  # the positive control: it listens
        _stop_listening(listener)
        assert listener.is_alive()  # told to end at its next wake, not waited for
        listener.join(20)
        assert not listener.is_alive()  # and it did end
    finally:
        client.close()
