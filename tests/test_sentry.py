"""Sentry: the real SDK, a local receiver as the DSN's host, real workers and Redis.

One cluster for the module (redis-server with a password, one prefork worker, the
Daytona emulator, a Discord webhook answering 404, a PostgreSQL URL nobody listens on)
runs three scheduled competitions: a local one with a crashing candidate (a result, not
an event) whose Discord post and store write fail, one whose judge crashes in the chord
body, one whose Daytona create is refused. Secrets planted in the worker's environment
must appear nowhere in what the receiver decoded.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.daytona_emulator import DaytonaEmulator
from tests.discord_server import DiscordServer
from tests.manifests import write_manifest
from tests.procs import ROOT, CeleryWorker, RedisServer, call_task, forge_env, free_port
from tests.sentry_receiver import SentryReceiver, summary

# Every test starts processes (redis-server, celery workers, sandboxes); tests/markers.py.
pytestmark = pytest.mark.processes

TOKEN = secrets.token_hex(6)
SECRETS = {
    "redis": f"redis-pw-{TOKEN}",
    "postgres": f"pg-pw-{TOKEN}",
    "daytona": f"dtn_live_{TOKEN}",
    "flower": f"flower-pw-{TOKEN}",
    "sandbox": f"comp-tok-{TOKEN}",  # allow-listed into the local competition's sandboxes
}
GOOD = """import os, sys
print("token is", os.environ.get("OBS_COMP_TOKEN"))
open(sys.argv[2], "w").write("# Post\\n\\n**Event** " + sys.argv[1] + "\\n")
"""
CRASH = "import sys\nprint('about to fail')\nsys.exit(3)\n"


def scrubbed_everywhere(receiver: SentryReceiver, secret_values) -> None:
    body = receiver.decoded()
    assert body, "the receiver decoded nothing"
    for value in secret_values:
        assert value.encode() not in body, f"secret {value[:6]}... reached Sentry"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sentry")
    with SentryReceiver() as receiver, DiscordServer(fail_status=404) as discord, \
            DaytonaEmulator(api_key=f"emu-key-{TOKEN}") as emulator:
        redis = RedisServer(tmp / "redis", password=SECRETS["redis"]).start()
        conf = tmp / "conf"
        write_manifest(conf / "local", {"good": GOOD, "crash": CRASH},
                       header='judge = "tests.obs_judges:Wins"')
        write_manifest(conf / "crashjudge", {"good": GOOD},
                       header='judge = "tests.obs_judges:Crashes"')
        write_manifest(conf / "cloud", {"remote": GOOD}, header='judge = "tests.obs_judges:Wins"')
        (conf / "forge.toml").write_text(
            '[[competition]]\nname = "local-sf"\nobjective = "Local run"\n'
            'candidates = "local/candidates.toml"\ntimeout = 20\npost = true\n'
            'env = ["OBS_COMP_TOKEN"]\n\n'
            '[[competition]]\nname = "judged"\nobjective = "Judge crash"\n'
            'candidates = "crashjudge/candidates.toml"\ntimeout = 20\n\n'
            '[[competition]]\nname = "cloud-sf"\nobjective = "Cloud run"\n'
            'candidates = "cloud/candidates.toml"\ntimeout = 20\nexecution = "daytona"\n',
            encoding="utf-8")
        artifacts = tmp / "artifacts"
        env = forge_env(
            redis.url, artifacts, SENTRY_DSN=receiver.dsn,
            FORGE_COMPETITIONS=str(conf / "forge.toml"),
            DISCORD_WEBHOOK_URL=discord.url,
            DAYTONA_API_KEY=SECRETS["daytona"], DAYTONA_API_URL=emulator.url,
            DAYTONA_USE_DEPRECATED_POLLING="true", NO_PROXY="127.0.0.1,localhost",
            FORGE_DATABASE_URL=(f"postgresql+psycopg://forge:{SECRETS['postgres']}"
                                f"@127.0.0.1:{free_port()}/forge"),
            FLOWER_BASIC_AUTH=f"admin:{SECRETS['flower']}",
            OBS_COMP_TOKEN=SECRETS["sandbox"])
        worker = CeleryWorker(env, "sentry", tmp, concurrency=2).start()
        try:
            runs = {name: call_task(redis, "dispatcher.scheduling.start_competition", name, "now")
                    for name in ("local-sf", "judged", "cloud-sf")}
            for started in runs.values():
                assert started["status"] == "dispatched", started
            deadline = time.monotonic() + 90
            client = redis.client()
            for started in runs.values():
                body = f"celery-task-meta-{started['run_id']}:collect"
                while json.loads(client.get(body) or "{}").get("status") not in ("SUCCESS",
                                                                                 "FAILURE"):
                    assert time.monotonic() < deadline, worker.logtext()[-3000:]
                    time.sleep(0.2)
            # Every failure above has been reported by now, or is about to be (the SDK
            # sends from a thread): wait for the last kind, then a little for stragglers.
            receiver.wait_for(lambda e: (e.get("tags") or {}).get("failure") == "store_write"
                              and e["tags"].get("competition") == "cloud-sf")
            time.sleep(1.0)
            yield SimpleNamespace(receiver=receiver, runs={k: v["run_id"] for k, v in
                                                           runs.items()},
                                  artifacts=artifacts, worker=worker, discord=discord,
                                  secrets=[*SECRETS.values(), discord.url,
                                           discord.url.rsplit("/", 1)[-1]])
        finally:
            worker.stop()
            redis.stop()


def events_of(cluster, failure: str, competition: str) -> list[dict]:
    return [e for e in cluster.receiver.events()
            if (e.get("tags") or {}).get("failure") == failure
            and e["tags"].get("competition") == competition]


def test_a_sandbox_backend_failure_is_an_event_tagged_with_its_candidate(cluster):
    run_id = cluster.runs["cloud-sf"]
    summary_json = json.loads((cluster.artifacts / run_id / "summary.json").read_text())
    assert "Sandbox creation failed" in summary_json["results"][0]["error_message"]
    [event] = events_of(cluster, "sandbox_backend", "cloud-sf")
    tags = event["tags"]
    assert (tags["run_id"], tags["candidate_id"], tags["execution_mode"], tags["backend"]) == \
        (run_id, "remote", "daytona", "daytona")
    assert tags["service"] == "worker"
    [exc] = event["exception"]["values"][-1:]
    assert exc["type"] == "SandboxError"
    # No frame carries local variables (where secrets and candidate scripts live).
    frames = [f for v in event["exception"]["values"]
              for f in (v.get("stacktrace") or {}).get("frames", [])]
    assert frames and not any("vars" in f for f in frames)


def test_a_failing_candidate_is_a_result_not_an_event(cluster):
    run_id = cluster.runs["local-sf"]
    results = {r["candidate_id"]: r for r in json.loads(
        (cluster.artifacts / run_id / "summary.json").read_text())["results"]}
    assert results["crash"]["success"] is False and results["crash"]["exit_code"] == 3
    assert results["good"]["success"] is True
    for event in cluster.receiver.events():
        assert (event.get("tags") or {}).get("candidate_id") != "crash", summary(event)
        assert "exited with code" not in json.dumps(event), summary(event)
    # The local run's only events: its Discord post and its store write.
    kinds = sorted(e["tags"]["failure"] for e in cluster.receiver.events()
                   if (e.get("tags") or {}).get("run_id") == run_id)
    assert kinds == ["discord", "store_write"], kinds


def test_discord_and_store_failures_are_events_with_run_tags(cluster):
    run_id = cluster.runs["local-sf"]
    [post] = events_of(cluster, "discord", "local-sf")
    assert post["tags"]["run_id"] == run_id and post["tags"]["execution_mode"] == "local"
    assert "HTTP 404 from the webhook" in post["logentry"]["message"] \
        if "logentry" in post else "HTTP 404" in post["message"]
    assert len(cluster.discord.requests) == 1  # the post was really tried
    [store] = events_of(cluster, "store_write", "local-sf")
    assert store["tags"]["run_id"] == run_id
    [exc] = store["exception"]["values"][-1:]
    assert exc["type"] == "StoreError" and "127.0.0.1" in exc["value"], exc


def test_a_judge_crash_fails_the_chord_body_and_is_reported_scrubbed(cluster):
    """The positive control: the judge's exception message holds a real secret of the
    worker's environment, so the event would carry it; the event arrives, with the
    secret replaced."""
    run_id = cluster.runs["judged"]
    [event] = events_of(cluster, "chord_body", "judged")
    assert event["tags"]["run_id"] == run_id
    exc = event["exception"]["values"][-1]
    assert exc["type"] == "RuntimeError"
    assert exc["value"] == "judge exploded near [Filtered]"
    assert event["extra"]["celery-job"]["args"] == "[Filtered]"  # no task arguments
    assert not (cluster.artifacts / run_id / "summary.json").exists()


def test_no_secret_reaches_sentry_anywhere(cluster):
    events = cluster.receiver.events()
    assert len(events) >= 5, [summary(e) for e in events]
    scrubbed_everywhere(cluster.receiver, cluster.secrets)
    # The DSN's key travels in the envelope header and auth header, as the protocol
    # needs; never inside an event.
    key = cluster.receiver.dsn.split("//")[1].split("@")[0]
    assert all(key not in json.dumps(e) for e in events)
    # Kept for the report: one event as the receiver decoded it.
    (Path(cluster.artifacts).parent / "sentry-event.json").write_text(
        json.dumps(events_of(cluster, "chord_body", "judged")[0], indent=2))


# -- the scrubber's positive control, without Celery --------------------------------

CAPTURE = """
import logging, os, sys
if sys.argv[1] == "plain":
    import sentry_sdk
    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"],
                    _experiments={"transport_compression_level": 0})
    report, flush = (lambda exc, _kind: sentry_sdk.capture_exception(exc)), sentry_sdk.flush
else:
    from worker.observability import report, sentry, setup_process
    setup_process("cli")
    flush = sentry.flush
secret = os.environ["DAYTONA_API_KEY"]
logging.getLogger("demo").warning("calling %s with %s", os.environ["DISCORD_WEBHOOK_URL"],
                                  secret)
try:
    raise RuntimeError("refused key " + secret + " for redis://:"
                       + os.environ["REDIS_PASSWORD"] + "@cache:6379/0")
except RuntimeError as exc:
    report(exc, "demo")
flush(10)
"""


@pytest.mark.parametrize("mode", ["plain", "ours"])
def test_the_scrubber_is_what_keeps_secrets_out(mode):
    """``plain``: the SDK alone (uncompressed) sends the secrets: the check can see them.
    ``ours``: the same exception through our set-up (gzip) arrives without them."""
    planted = {"DAYTONA_API_KEY": f"dtn_live_{TOKEN}x", "REDIS_PASSWORD": f"rpw-{TOKEN}x",
               "DISCORD_WEBHOOK_URL": f"https://discord.com/api/webhooks/123456789012345678/"
                                      f"tok-{TOKEN}-abcdefghijklmnopqrstuvwxyz"}
    with SentryReceiver() as receiver:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SENTRY_DSN": receiver.dsn, **planted}
        done = subprocess.run([sys.executable, "-c", CAPTURE, mode], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        [event] = receiver.wait_for(lambda e: e.get("exception"))
        body = receiver.decoded()
        encodings = {r["headers"].get("Content-Encoding") for r in receiver.requests}
        value = event["exception"]["values"][-1]["value"]
    if mode == "plain":
        assert encodings == {None}
        for secret in planted.values():
            assert secret.encode() in body
    else:
        assert encodings == {"gzip"}
        for secret in planted.values():
            assert secret.encode() not in body
        assert value == "refused key [Filtered] for redis://:[Filtered]@cache:6379/0"
        crumbs = event["breadcrumbs"]["values"]
        assert any(c.get("message") == "calling [Filtered] with [Filtered]" for c in crumbs), \
            crumbs
        assert event["tags"]["failure"] == "demo" and event["tags"]["service"] == "cli"


def test_without_a_dsn_nothing_is_imported(tmp_path):
    """An embedded run without SENTRY_DSN or FORGE_METRICS_PORT: neither SDK is loaded."""
    manifest = write_manifest(tmp_path / "c", {"good": GOOD, "crash": CRASH},
                              header='judge = "tests.obs_judges:Wins"')
    code = ("import sys\nfrom dispatcher.runner import run_forge\n"
            f"r = run_forge('obj', candidates={str(manifest)!r}, post=False)\n"
            "assert r.winner_id == 'good', r\n"
            "print('LOADED', sorted(m for m in ('sentry_sdk', 'prometheus_client') "
            "if m in sys.modules))\n")
    env = forge_env(None, tmp_path / "artifacts")
    env.pop("SENTRY_DSN", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout


def test_the_scrubber_knows_each_kind_of_secret():
    from worker.observability.scrub import FILTERED, Scrubber

    hook = "https://discord.com/api/webhooks/123456789012345678/tok-abcdefghijklmnopqrstu"
    scrubber = Scrubber()
    scrubber.add_environment({
        "DISCORD_WEBHOOK_URL": hook, "FLOWER_BASIC_AUTH": "admin:flower-secret",
        "CELERY_BROKER_URL": "redis://:p%40ss-word@redis:6379/0",
        "GITHUB_TOKEN": "ghp_abcdef123456", "SHORT_TOKEN": "abc",
        "DAYTONA_API_KEY": "your_daytona_api_key",  # a placeholder: not a secret
        "MODEL_ENDPOINT": "https://models.internal/v1", "HOME": "/root",
    }, sandbox_names=["MODEL_ENDPOINT"])
    text = (f"posting to {hook}?wait=true (id 123456789012345678, token "
            "tok-abcdefghijklmnopqrstu); Basic YWRtaW46Zmxvd2VyLXNlY3JldA== "
            "flower-secret p@ss-word p%40ss-word ghp_abcdef123456 abc "
            "https://models.internal/v1 your_daytona_api_key /root webhooks "
            "postgresql://u:other-pw@db/x")
    out = scrubber.scrub(text)
    for gone in ("tok-abcdefghijklmnopqrstu", "123456789012345678", "YWRtaW46Zmxvd2Vy",
                 "flower-secret", "p@ss-word", "p%40ss-word", "ghp_abcdef123456",
                 "models.internal", "other-pw"):
        assert gone not in out, (gone, out)
    # Too short, placeholders, ordinary values and words stay readable.
    for kept in (" abc ", "your_daytona_api_key", "/root", " webhooks ",
                 "postgresql://u:[Filtered]@db/x"):
        assert kept in out, (kept, out)
    assert out.count(FILTERED) >= 9
    nested = scrubber.scrub_data({"a": [hook, {"k": ("ghp_abcdef123456",)}], "n": 3})
    assert nested == {"a": [FILTERED, {"k": [FILTERED]}], "n": 3}


WEB = """
import os, sys
from starlette.routing import Route
from starlette.testclient import TestClient
from dispatcher.web.app import create_app
from dispatcher.web.settings import WebSettings

app = create_app(WebSettings(artifacts_dir=sys.argv[1]))

def boom(request):
    raise RuntimeError("dashboard bug; token " + os.environ["FORGE_WEB_TOKEN"])

app.router.routes.append(Route("/boom", boom))
with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as client:
    print("STATUS", client.get("/boom").status_code)
from worker.observability import sentry
sentry.flush(10)
"""


def test_the_web_app_reports_its_errors(tmp_path):
    """create_app is the dashboard's one-call set-up: an unexpected error in a request
    is an event tagged service=web, its secret scrubbed."""
    token = f"web-token-{TOKEN}-0123456789"
    with SentryReceiver() as receiver:
        env = {**forge_env(None, tmp_path / "artifacts"), "SENTRY_DSN": receiver.dsn,
               "FORGE_WEB_TOKEN": token}
        done = subprocess.run([sys.executable, "-c", WEB, str(tmp_path / "artifacts")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "STATUS 500" in done.stdout, done.stderr[-3000:]
        [event] = receiver.wait_for(lambda e: e.get("exception"))
        assert event["tags"]["service"] == "web"
        assert event["exception"]["values"][-1]["mechanism"]["type"] == "starlette"  # once
        assert event["exception"]["values"][-1]["value"] == "dashboard bug; token [Filtered]"
        scrubbed_everywhere(receiver, [token])
