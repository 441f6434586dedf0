"""Shared fixtures: real redis-server and real celery workers, stopped by PID."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.procs import CeleryWorker, PostgresServer, RedisServer, forge_env, starts_processes

pytest_plugins = ("celery.contrib.pytest", "tests.markers")

# The suite never uses a broker from the developer's environment or .env. (The hostile
# suite puts a worker's credentials back, its own, while its candidates run: they must be
# there for "they never reach a sandbox" to mean anything; tests/test_hostile.py.)
for _name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DISCORD_WEBHOOK_URL",
              "DAYTONA_API_KEY", "DAYTONA_API_URL", "DAYTONA_BASE_URL", "FORGE_DATABASE_URL",
              "FORGE_STORE"):
    os.environ.pop(_name, None)
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def daytona_audit(request: pytest.FixtureRequest):
    """In every test with a Daytona emulator (``emu``): nothing it created is left alive,
    and the API key never reached a sandbox (environment, uploads) or a call body."""
    if "emu" not in request.fixturenames:
        yield
        return
    emulator = request.getfixturevalue("emu")
    emulator.reset_faults()
    before = len(emulator.created)
    yield
    emulator.reset_faults()
    alive = set(emulator.alive())
    assert [i for i in emulator.created[before:] if i in alive] == []
    key = emulator.api_key
    assert key not in json.dumps(emulator.exec_envs)
    assert key not in json.dumps(emulator.calls)
    assert all(key.encode() not in content for _, _, content in emulator.uploads)


@pytest.fixture
@starts_processes
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
@starts_processes
def workers(tmp_path: Path):
    """Factory: ``workers(env, n=2, concurrency=2, pool="prefork")`` → started workers."""
    started: list[CeleryWorker] = []

    def make(env: dict[str, str], n: int = 2, concurrency: int = 2, pool: str = "prefork",
             extra_args: tuple[str, ...] = (), prefix: str = "w") -> list[CeleryWorker]:
        batch = [CeleryWorker(env, f"{prefix}{i + 1}", tmp_path, concurrency, pool, extra_args)
                 for i in range(n)]
        for w in batch:
            w.start(wait_ready=False)
            started.append(w)
        for w in batch:
            w.wait_ready()
        return batch

    yield make
    for w in started:
        w.stop()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


@pytest.fixture
def distributed_env(redis_server, artifacts):
    return forge_env(redis_server.url, artifacts)


@pytest.fixture(scope="session")
@starts_processes
def pg_server():
    """One real PostgreSQL for the session (initdb into a temp dir, a free port)."""
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's PostgreSQL (its SQLAlchemy URL)."""
    import uuid

    return pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.processes)])
def store_url(request, tmp_path: Path) -> str:
    """The same store test on both backends: a SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'forge.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    from worker.store import open_store
    from worker.store.db import dispose_all

    yield open_store(store_url)
    dispose_all()
