"""FORGE_LOG_FORMAT=json: every log line of a real worker, of beat and of the CLI is one
JSON object, with the task's run, candidate, task id and worker where they apply."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.discord_server import DiscordServer
from tests.manifests import write_manifest
from tests.procs import (
    ROOT,
    CeleryWorker,
    RedisServer,
    call_task,
    forge_env,
    run_forge_cli,
    stop_process,
)

# Every test starts processes (celery workers and sandboxes); tests/markers.py.
pytestmark = pytest.mark.processes

GOOD = """import sys
print("working")
open(sys.argv[2], "w").write("# Post\\n\\n**Event** " + sys.argv[1] + "\\n")
"""
CRASH = "import sys\nsys.exit(3)\n"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# What Celery itself prints to stdout, outside logging (the log stream is stderr).
CELERY_PRINTS = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")


def json_lines(text: str) -> list[dict]:
    """Every non-empty line parsed as JSON (failing on the first that is not)."""
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert TIME.match(record["time"]), record["time"]
        records.append(record)
    return records


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logs")
    redis = RedisServer(tmp / "redis").start()
    conf = tmp / "conf"
    write_manifest(conf / "cands", {"good": GOOD, "crash": CRASH},
                   header='judge = "tests.obs_judges:Probe"')
    (conf / "forge.toml").write_text(
        '[[competition]]\nname = "logged"\nobjective = "Logged run"\n'
        'candidates = "cands/candidates.toml"\ntimeout = 20\n', encoding="utf-8")
    artifacts = tmp / "artifacts"
    env = forge_env(redis.url, artifacts, FORGE_LOG_FORMAT="json",
                    FORGE_COMPETITIONS=str(conf / "forge.toml"))
    worker = CeleryWorker(env, "logs", tmp, concurrency=2, split_stdout=True).start()
    try:
        started = call_task(redis, "dispatcher.scheduling.start_competition", "logged", "now")
        summary = artifacts / started["run_id"] / "summary.json"
        deadline = time.monotonic() + 60
        while not summary.exists():
            assert time.monotonic() < deadline, worker.logtext()[-3000:]
            time.sleep(0.1)
        time.sleep(0.5)  # the body's own last lines
    finally:
        worker.stop()
        redis.stop()
    yield SimpleNamespace(run_id=started["run_id"], records=json_lines(worker.logtext()),
                          stdout=worker.stdout_file.read_text(),
                          summary=json.loads(summary.read_text()), tmp=tmp)


def test_every_line_of_the_worker_log_is_one_json_object(worker_run):
    records = worker_run.records
    assert len(records) >= 15
    loggers = {r["logger"] for r in records}
    assert {"celery.worker", "celery.apps.worker", "celery.app.trace",
            "dream_foundry"} <= loggers, loggers
    # Celery's start-up banner became a log line, with what it used to print.
    [banner] = [r for r in records if r["message"] == "worker starting"]
    assert "[queues]" in banner["startup"] and "prefork" in banner["startup"]
    # stdout, which Celery prints to outside logging, holds no log line.
    for line in filter(None, worker_run.stdout.splitlines()):
        assert CELERY_PRINTS.match(line), line


def test_task_lines_carry_run_candidate_task_and_worker(worker_run):
    run_id, records = worker_run.run_id, worker_run.records
    node = f"logs@{socket.gethostname()}"
    finished = [r for r in records if r["logger"] == "dream_foundry"
                and r["message"].startswith(f"[{run_id}] good succeeded")]
    assert len(finished) == 1, [r["message"] for r in records]
    line = finished[0]
    assert (line["run_id"], line["candidate_id"], line["task_id"], line["worker"],
            line["competition"], line["execution_mode"], line["task"]) == \
        (run_id, "good", f"{run_id}:good", node, "logged", "local",
         "worker.tasks.run_candidate")
    crash = [r for r in records if r.get("candidate_id") == "crash"
             and r["logger"] == "celery.app.trace"]
    assert crash and all(r["task_id"] == f"{run_id}:crash" for r in crash)
    body = [r for r in records if r["message"].startswith(f"[{run_id}] run written")]
    assert len(body) == 1
    assert body[0]["task_id"] == f"{run_id}:collect" and "candidate_id" not in body[0]
    # The main process's lines name the worker and no task.
    [ready] = [r for r in records if r["message"].endswith(" ready.")]
    assert ready["worker"] == node and "task_id" not in ready


def test_a_worker_without_dsn_or_metrics_port_has_neither(worker_run):
    """The Probe judge ran in a pool process of that worker (no SENTRY_DSN, no
    FORGE_METRICS_PORT): the Sentry SDK was never imported, no metric defined.
    (prometheus_client itself is loaded by Celery's command line through Flower's
    plugin in every ``celery`` process, whatever we do.)"""
    details = [s["quality_details"] for s in worker_run.summary["scores"]]
    assert details and all(d == {"sentry_sdk": False, "metrics": False}
                           for d in details), details


def test_beat_logs_json(tmp_path):
    conf = tmp_path / "forge.toml"
    conf.write_text(f'[[competition]]\nname = "tick"\nobjective = "x"\ncandidates = '
                    f'"{ROOT / "tests/fixtures/basic/candidates.toml"}"\n'
                    'schedule = "* * * * *"\n', encoding="utf-8")
    redis = RedisServer(tmp_path / "redis").start()
    env = forge_env(redis.url, tmp_path / "artifacts", FORGE_LOG_FORMAT="json",
                    CELERY_QUIET="1", FORGE_COMPETITIONS=str(conf),
                    FORGE_BEAT_SCHEDULE=str(tmp_path / "beat-schedule"))
    out = open(tmp_path / "beat.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "beat",
                             "--loglevel", "DEBUG"], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "beat: Starting" not in (tmp_path / "beat.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "beat.log").read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # a few scheduler lines more
    finally:
        stop_process(proc)
        out.close()
        redis.stop()
    records = json_lines((tmp_path / "beat.log").read_text())
    assert any(r["logger"] == "celery.beat" and r["message"] == "beat: Starting..."
               for r in records)
    assert len(records) >= 2


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_cli_logs_json_when_asked_and_plain_text_by_default(tmp_path, fmt):
    """An embedded run whose Discord post fails logs one warning: a JSON object with its
    run and task when asked, Python's plain line otherwise (the default)."""
    manifest = write_manifest(tmp_path / "c", {"good": GOOD},
                              header='judge = "tests.obs_judges:Wins"')
    with DiscordServer(fail_status=404) as discord:
        extra = {"FORGE_LOG_FORMAT": fmt} if fmt == "json" else {}
        env = forge_env(None, tmp_path / "artifacts", DISCORD_WEBHOOK_URL=discord.url,
                        **extra)
        done = run_forge_cli(["run", "obj", "--candidates", str(manifest),
                              "--run-id", "cli-logged"], env)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, done.stdout
    if fmt == "text":
        assert not any(line.startswith("{") for line in lines), lines
        assert any("Discord: not posted" in line for line in lines), lines
        return
    records = json_lines(done.stderr)
    [post] = [r for r in records if "Discord: not posted" in r["message"]]
    assert post["level"] == "WARNING" and post["run_id"] == "cli-logged"
    assert post["task_id"] == "cli-logged:collect" and post["worker"]  # the in-process one
