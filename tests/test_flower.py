"""Flower sees a run: readable task names and arguments, no script or secret, basic auth.

A real Flower (``celery -A worker flower``) watches a real redis-server while a real
worker runs a small competition started by ``start_competition``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.manifests import write_manifest
from tests.procs import ROOT, call_task, forge_env, free_port, stop_process

MARKER = "SCRIPT-BODY-MARKER-5be1c0"
SECRET = "tok-never-in-flower-93d7e2"
SCRIPT = f"""# {MARKER}
import os, sys
assert os.environ.get("FLOWER_TEST_TOKEN")  # allowed in, but never shown anywhere
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write("# Post\\n\\n" + sys.argv[1] + "\\n")
"""


def get(url: str, auth: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@pytest.fixture
def flower(redis_server, tmp_path):
    port = free_port()
    env = forge_env(redis_server.url, tmp_path / "artifacts")
    log = open(tmp_path / "flower.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
         "--basic-auth=user:pass", "--address=127.0.0.1"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "flower.log").read_text()[-3000:]
        try:
            if get(f"{base}/api/workers?refresh=false", "user:pass")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "flower.log").read_text()[-3000:]
        time.sleep(0.2)
    yield base
    stop_process(proc)
    log.close()


def test_flower_lists_the_run_with_readable_args_and_no_secrets(
        redis_server, workers, flower, artifacts, tmp_path):
    conf = tmp_path / "conf"
    write_manifest(conf / "cands", {"fa": SCRIPT, "fb": SCRIPT}, header='judge = "events"')
    (conf / "forge.toml").write_text(
        '[[competition]]\nname = "watched"\nobjective = "Watched run"\n'
        'candidates = "cands/candidates.toml"\ntimeout = 20\npost = false\n'
        'env = ["FLOWER_TEST_TOKEN"]\n', encoding="utf-8")
    env = forge_env(redis_server.url, artifacts, FORGE_COMPETITIONS=str(conf / "forge.toml"),
                    FLOWER_TEST_TOKEN=SECRET)
    workers(env, n=1, concurrency=2)

    started = call_task(redis_server, "dispatcher.scheduling.start_competition", "watched", "now")
    assert started["status"] == "dispatched", started
    run_id = started["run_id"]
    deadline = time.monotonic() + 60
    while not (artifacts / run_id / "summary.json").exists():
        assert time.monotonic() < deadline, "the run never finished"
        time.sleep(0.2)
    summary = json.loads((artifacts / run_id / "summary.json").read_text())
    assert all(r["success"] for r in summary["results"]), summary["results"]

    wanted = {f"{run_id}:fa", f"{run_id}:fb", f"{run_id}:collect"}
    deadline = time.monotonic() + 30
    while True:
        status, body = get(f"{flower}/api/tasks?limit=100", "user:pass")
        assert status == 200, body[:500]
        tasks = json.loads(body)
        done = {uuid for uuid, t in tasks.items() if t.get("state") == "SUCCESS"}
        if wanted <= done:
            break
        assert time.monotonic() < deadline, sorted(tasks)
        time.sleep(0.3)

    for cid in ("fa", "fb"):
        task = tasks[f"{run_id}:{cid}"]
        assert task["name"] == "worker.tasks.run_candidate"
        assert f"run={run_id}" in task["args"] and f"candidate={cid}" in task["args"]
    body_task = tasks[f"{run_id}:collect"]
    assert body_task["name"] == "worker.tasks.collect_results"
    assert f"run={run_id}" in body_task["args"] and "candidates=2" in body_task["args"]
    starters = [t for t in tasks.values() if t["name"] == "dispatcher.scheduling.start_competition"]
    assert len(starters) == 1 and "watched" in starters[0]["args"]
    # Neither the script nor a secret from the worker's environment reaches Flower.
    assert MARKER not in body and "FLOWER_TEST_TOKEN" not in body
    assert SECRET not in body
    (tmp_path / "flower-api-tasks.json").write_text(body)  # kept for the report

    assert get(f"{flower}/api/tasks")[0] == 401
    assert get(f"{flower}/api/tasks", "user:wrong")[0] == 401
    assert get(f"{flower}/api/task/info/{run_id}:fa", "user:pass")[0] == 200


def test_flower_refuses_requests_without_credentials(flower):
    assert get(f"{flower}/")[0] == 401
    assert get(f"{flower}/api/workers")[0] == 401
    assert get(f"{flower}/", "user:pass")[0] == 200
    assert get(f"{flower}/healthcheck") == (200, "OK")  # what compose's health check calls



def test_flower_metrics_answer_without_credentials_as_docs_security_says(flower):
    """Flower's own behaviour, which docs/security.md states and compose's loopback-only
    publishing answers: basic auth does not cover /metrics. If Flower ever guards it,
    this fails and the documentation must change with it."""
    status, body = get(f"{flower}/metrics")
    assert status == 200 and "flower_" in body  # Prometheus text, no credentials
    assert get(f"{flower}/api/workers")[0] == 401  # control: the API itself is guarded
    doc = (ROOT / "docs" / "security.md").read_text()
    assert "/metrics" in doc and "127.0.0.1" in doc
