"""Real processes for tests: redis-server on a free loopback port, celery workers.

Every process is started here and stopped by its PID (never by name). A missing binary
is a loud failure, not a skip: CI installs what the suite needs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent

PROCESS_FIXTURES: set[str] = set()  # names of the fixtures that start processes


def starts_processes(fixture_function):
    """Declares (under ``@pytest.fixture``) that a fixture starts processes: every test
    using it, directly or through another fixture, gets the ``processes`` mark
    (tests/markers.py). Fixtures are told apart by name, as pytest resolves them."""
    PROCESS_FIXTURES.add(fixture_function.__name__)
    return fixture_function


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: the README's test command installs it")
    return path


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


class RedisServer:
    """A private redis-server; ``aof=True`` keeps data across ``restart()``."""

    def __init__(self, workdir: Path, aof: bool = False, password: str | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [require_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--save", "", "--maxmemory-policy", "noeviction",
                "--appendonly", "yes" if self.aof else "no", "--logfile",
                str(self.workdir / "redis.log")]
        if self.aof:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, start_new_session=True)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def postgres_bin(name: str) -> str:
    """A PostgreSQL server binary (initdb, postgres): Debian keeps them off PATH, under
    /usr/lib/postgresql/<version>/bin; the newest version wins."""
    import glob
    import re

    found = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    found.sort(key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/")[4])])
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (package postgresql): "
                           "the README's test command installs it")
    return path


class PostgresServer:
    """A private PostgreSQL: ``initdb`` into a temporary directory, ``postgres`` on a
    free loopback port (password auth over TCP), started and stopped by PID.

    PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres``
    user (the package creates it), in its own directory under /tmp (pytest's are 0700).
    """

    USER = "forge"
    PASSWORD = "pg-s3cret-pw"

    def __init__(self, fsync: bool = False):
        import tempfile

        self.fsync = fsync  # off in tests (speed); on for benchmarks (a real server's cost)
        self.dir = Path(tempfile.mkdtemp(prefix="forge-pg-"))
        self.data, self.sock = self.dir / "data", self.dir / "sock"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._as = {}
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, PostgreSQL needs the 'postgres' user "
                                   "(apt-get install postgresql creates it)") from None
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.sock.mkdir()
        if self._as:
            os.chown(self.sock, self._as["user"], self._as["group"])
        pwfile = self.dir / "pw"
        pwfile.write_text(self.PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        done = subprocess.run(
            [postgres_bin("initdb"), "-D", str(self.data), "-U", self.USER,
             f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, timeout=120, **self._as)
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        return (f"postgresql+psycopg://{self.USER}:{password or self.PASSWORD}"
                f"@127.0.0.1:{self.port}/{database}")

    def start(self) -> PostgresServer:
        import psycopg

        args = [postgres_bin("postgres"), "-D", str(self.data), "-k", str(self.sock),
                "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200"]
        self.log = open(self.dir / "postgres.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **self._as)
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"postgres did not start on port {self.port}: "
                                       f"{self.logtext()[-2000:]}") from None
                time.sleep(0.1)

    def dsn(self, database: str = "postgres") -> str:
        return (f"host=127.0.0.1 port={self.port} user={self.USER} "
                f"password={self.PASSWORD} dbname={database}")

    def create_database(self, name: str) -> str:
        """A fresh database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def logtext(self) -> str:
        try:
            return (self.dir / "postgres.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back, disconnect clients, stop)."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, 30)
            self.proc = None
            self.log.close()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def forge_env(redis_url: str | None, artifacts: Path, **extra: str) -> dict[str, str]:
    """Environment for a forge/celery subprocess: distributed when redis_url is given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERY_", "FORGE_", "DAYTONA_", "DISCORD_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["FORGE_ARTIFACTS_DIR"] = str(artifacts)
    env["PYTHONUNBUFFERED"] = "1"
    if redis_url:
        env["CELERY_BROKER_URL"] = redis_url
        env["CELERY_RESULT_BACKEND"] = redis_url
    env.update(extra)
    return env


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (a path, a unique argument)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


class CeleryWorker:
    """A real ``celery -A worker worker`` process."""

    def __init__(self, env: dict[str, str], name: str, logdir: Path, concurrency: int = 2,
                 pool: str = "prefork", extra_args: tuple[str, ...] = (),
                 split_stdout: bool = False, app: str = "worker"):
        self.env = env
        self.app = app  # the -A module (tests/barrier_worker.py wraps the real app)
        self.name = name
        self.logfile = Path(logdir) / f"{name}.log"  # stderr (and stdout unless split)
        self.stdout_file = Path(logdir) / f"{name}.out" if split_stdout else None
        self.concurrency = concurrency
        self.pool = pool
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True) -> CeleryWorker:
        args = [sys.executable, "-m", "celery", "-A", self.app, "worker", "--loglevel", "INFO",
                "-n", f"{self.name}@%h", "-c", str(self.concurrency), "-P", self.pool,
                "--without-mingle", "--without-gossip", *self.extra_args]
        self.log = open(self.logfile, "ab")
        out = open(self.stdout_file, "ab") if self.stdout_file else None
        self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=out or self.log,
                                     stderr=self.log if out else subprocess.STDOUT,
                                     start_new_session=True)
        if out:
            out.close()  # the child has its own copy
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.logtext()[-3000:]}")
            if " ready." in self.logtext():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready in {timeout}s: {self.logtext()[-3000:]}")

    def logtext(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def child_pids(self) -> list[int]:
        """PIDs of the pool processes (prefork children)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: int = signal.SIGTERM, wait: float = 30) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig, wait)
            self.log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def run_forge_cli(args: list[str], env: dict[str, str], timeout: float = 180,
                  **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dispatcher.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def publish_task(redis_server, name: str, args: tuple = (), kwargs: dict | None = None,
                 timeout: float = 30, **options) -> dict:
    """Publish a task message by hand through the real broker (as anyone with access to
    it could) and return its final meta (SUCCESS or FAILURE) read straight from Redis."""
    from celery import Celery

    app = Celery("test-client", broker=redis_server.url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    task_id = app.send_task(name, args=args, kwargs=kwargs or {}, **options).id
    app.close()
    r = redis_server.client()
    deadline = time.monotonic() + timeout
    while True:
        raw = r.get(f"celery-task-meta-{task_id}")
        meta = json.loads(raw) if raw else {}
        if meta.get("status") in ("SUCCESS", "FAILURE"):
            return meta
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{args} did not finish")
        time.sleep(0.1)


def call_task(redis_server, name: str, *args, timeout: float = 30):
    """Send a task through the real broker; read its result straight from Redis."""
    meta = publish_task(redis_server, name, args, timeout=timeout)
    if meta["status"] != "SUCCESS":
        raise AssertionError(meta)
    return meta["result"]
