"""``forge doctor`` on a good set-up and on a broken one, against real parts: a
password-protected redis-server, a real Flower, the Daytona emulator with the real SDK,
a SQLite store, forge.toml. Secrets are planted everywhere doctor looks; none may be
printed."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.daytona_emulator import DaytonaEmulator
from tests.manifests import write_manifest
from tests.procs import ROOT, RedisServer, forge_env, free_port, run_forge_cli, stop_process

# Every test starts processes (redis-server, flower, the forge CLI); tests/markers.py.
pytestmark = pytest.mark.processes

TOKEN = secrets.token_hex(6)
REDIS_PW = f"redis-pw-{TOKEN}"
FLOWER_PW = f"flower-pw-{TOKEN}"
DAYTONA_KEY = f"dtn_live_{TOKEN}"
WEBHOOK_TOKEN = f"hook-{TOKEN}-" + "x" * 40
WEBHOOK = f"https://discord.com/api/webhooks/123456789012345678/{WEBHOOK_TOKEN}"
DSN_KEY = f"{TOKEN}{TOKEN}"
PG_PW = f"pg-pw-{TOKEN}"
PLANTED = [REDIS_PW, FLOWER_PW, DAYTONA_KEY, WEBHOOK_TOKEN, DSN_KEY, PG_PW]
CHECKS = ["settings", "broker", "workers", "result backend", "store", "bubblewrap",
          "slirp4netns", "cgroups", "daytona", "discord", "competitions", "flower", "sentry"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("doctor")
    redis = RedisServer(tmp / "redis", password=REDIS_PW).start()
    port = free_port()
    log = open(tmp / "flower.log", "ab")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
         "--address=127.0.0.1"], cwd=ROOT, env=forge_env(
             redis.url, tmp / "artifacts", FLOWER_BASIC_AUTH=f"admin:{FLOWER_PW}"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
            break
        except OSError:
            assert flower.poll() is None and time.monotonic() < deadline, \
                (tmp / "flower.log").read_text()[-2000:]
            time.sleep(0.2)
    conf = tmp / "conf"
    write_manifest(conf / "cands", {"a": "print(1)\n"})
    (conf / "forge.toml").write_text(
        '[[competition]]\nname = "weekly"\nobjective = "Weekly post"\n'
        'candidates = "cands/candidates.toml"\nschedule = "0 9 * * 1"\n'
        'timezone = "America/Los_Angeles"\n', encoding="utf-8")
    (conf / "broken.toml").write_text('[[competition]\nname = "weekly"\n', encoding="utf-8")
    with DaytonaEmulator(api_key=DAYTONA_KEY) as emulator:
        yield tmp, redis, port, conf, emulator
    stop_process(flower)
    log.close()
    redis.stop()


def doctor(env: dict[str, str]) -> tuple[int, list[str], str]:
    done = run_forge_cli(["doctor"], env, timeout=120)
    output = done.stdout + done.stderr
    for secret in PLANTED:
        assert secret not in output, f"doctor printed a secret ({secret[:6]}...):\n{output}"
    # Doctor redacts by itself; the scrubber behind it is a safety net that must not fire.
    assert "[Filtered]" not in output, output
    return done.returncode, done.stdout.splitlines(), output


def by_name(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        assert line[:2] in ("✓ ", "✗ "), line
        name = line[2:].split(":", 1)[0].removesuffix(" (optional)")
        found[name] = line
    return found


def test_doctor_on_a_good_set_up(parts, tmp_path, workers):
    tmp, redis, flower_port, conf, emulator = parts
    from worker.store import open_store
    from worker.store.db import dispose_all

    artifacts = tmp_path / "artifacts"
    open_store(f"sqlite:///{artifacts / 'forge.db'}")  # an existing, migrated store
    dispose_all()
    env = forge_env(redis.url, artifacts, FORGE_COMPETITIONS=str(conf / "forge.toml"),
                    DAYTONA_API_KEY=DAYTONA_KEY, DAYTONA_API_URL=emulator.url,
                    DAYTONA_USE_DEPRECATED_POLLING="true", NO_PROXY="127.0.0.1,localhost",
                    DISCORD_WEBHOOK_URL=WEBHOOK, FLOWER_BASIC_AUTH=f"admin:{FLOWER_PW}",
                    FORGE_FLOWER_URL=f"http://admin:{FLOWER_PW}@127.0.0.1:{flower_port}",
                    SENTRY_DSN=f"https://{DSN_KEY}@o1.ingest.sentry.io/4242")
    created = len(emulator.created)
    # Before any worker runs: the one optional ✗, which does not fail doctor.
    code, lines, output = doctor(env)
    checks = by_name(lines)
    assert code == 0, output
    assert checks["workers"].startswith("✗ workers (optional): none answered")
    assert "— fix: start one: celery -A worker worker" in checks["workers"]
    workers(env, n=1, concurrency=1, pool="solo", prefix="doc")
    code, lines, output = doctor(env)
    checks = by_name(lines)
    assert sorted(checks) == sorted(CHECKS), lines
    assert code == 0, output
    assert all(line.startswith("✓") for line in checks.values()), lines
    assert checks["workers"].startswith("✓ workers: 1 answer (doc1@"), checks["workers"]
    assert f"redis://:***@127.0.0.1:{redis.port}/0 answers" in checks["broker"]
    assert "at schema" in checks["store"] and "forge.db" in checks["store"]
    assert "accepted the key; 0 of our sandboxes alive" in checks["daytona"]
    assert "weekly at " in checks["competitions"] and "UTC" in checks["competitions"]
    assert f"http://admin:***@127.0.0.1:{flower_port} answers" in checks["flower"]
    assert "o1.ingest.sentry.io, project 4242" in checks["sentry"]
    assert len(emulator.created) == created  # asked for a list, created nothing
    assert emulator.calls[-1]["path"] == "list" and emulator.calls[-1]["status"] == 200
    (tmp.parent / "doctor-good.txt").write_text(output)  # kept for the report


def test_doctor_on_a_broken_set_up(parts, tmp_path):
    tmp, _redis, _flower_port, conf, emulator = parts
    dead = free_port()
    env = forge_env(f"redis://:{REDIS_PW}@127.0.0.1:{dead}/0", tmp_path / "artifacts",
                    FORGE_COMPETITIONS=str(conf / "broken.toml"),
                    DAYTONA_API_KEY=f"{DAYTONA_KEY}-revoked", DAYTONA_API_URL=emulator.url,
                    DAYTONA_USE_DEPRECATED_POLLING="true", NO_PROXY="127.0.0.1,localhost",
                    DISCORD_WEBHOOK_URL=f"https://discord.com/webhooks/{WEBHOOK_TOKEN}",
                    FORGE_DATABASE_URL=f"postgresql+psycopg://forge:{PG_PW}@127.0.0.1:"
                                       f"{free_port()}/forge",
                    FORGE_METRICS_PORT="99999")
    t0 = time.monotonic()
    code, lines, output = doctor(env)
    assert time.monotonic() - t0 < 60
    assert code == 1, output
    checks = by_name(lines)
    failed = {name for name, line in checks.items() if line.startswith("✗")}
    assert {"settings", "broker", "result backend", "store", "daytona", "discord",
            "competitions"} <= failed, lines
    for name in failed:
        assert " — fix: " in checks[name], checks[name]
    assert "FORGE_METRICS_PORT=99999 is not a TCP port" in checks["settings"]
    assert f"cannot reach redis://:***@127.0.0.1:{dead}/0" in checks["broker"]
    assert "workers" not in checks  # not asked when the broker is down
    assert "refused the key (HTTP 401)" in checks["daytona"]
    assert "DISCORD_WEBHOOK_URL is not a Discord webhook URL" in checks["discord"]
    assert "broken.toml: not valid TOML" in checks["competitions"]
    assert "postgresql+psycopg://forge:***@127.0.0.1" in checks["store"]
    assert "required check(s) failed" in output
    (tmp.parent / "doctor-broken.txt").write_text(output)  # kept for the report
