"""Engines for the store's URL: validated, set up once per process, migrated on first use.

* **SQLite** (the default, ``<artifacts dir>/forge.db``): WAL (readers never block the
  writer), ``synchronous=NORMAL`` (no fsync per commit; a power cut can lose the newest
  commits but never corrupts, and the run directory, fsynced, can be imported again),
  a 30 s busy timeout, foreign keys on. Writes begin with ``BEGIN IMMEDIATE`` so two
  writers queue on the busy timeout instead of one failing on a lock upgrade.
* **PostgreSQL** through psycopg 3. Migrations run under an advisory lock, so the
  workers starting together against an empty database migrate it once.

An engine is kept per URL and per process: a prefork pool process never uses a
connection its parent opened (they are forgotten, not closed, after a fork).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from worker.config import ConfigError, redact_url
from worker.store.migrations import HEAD, alembic_config

# pg_advisory_xact_lock key of the migration: any constant no other code uses.
MIGRATION_LOCK = 0x666F726765  # "forge"
WRITE = {"forge_write": True}  # execution option: a write transaction

_ENGINES: dict[str, Engine] = {}
_READY: set[str] = set()  # URLs whose schema this process has seen at HEAD
_LOCK = threading.Lock()

HINT = ("set FORGE_DATABASE_URL to postgresql+psycopg://USER:PASSWORD@HOST:5432/DB, or "
        "leave it unset for SQLite in the artifacts directory")


class StoreError(Exception):
    """The store cannot be reached, read or written; the message shows the URL redacted."""


def parse_url(url: str) -> URL:
    """The URL as SQLAlchemy's, with ``postgres://``/``postgresql://`` meaning psycopg 3.

    Anything but SQLite or PostgreSQL is refused, with the fix.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"FORGE_DATABASE_URL={redact_url(url)!r} is not a database URL; "
                          f"{HINT}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        if driver not in ("", "psycopg"):
            raise ConfigError(f"database driver {driver!r} is not installed (in "
                              f"{redact_url(url)}): use postgresql+psycopg://...")
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(f"{redact_url(url)}: the store needs a SQLite file, not an "
                              "in-memory database (other processes must see it)")
        return parsed
    raise ConfigError(f"unsupported database {backend!r} in {redact_url(url)}: {HINT}")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL)."""
    parsed = parse_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" else None


def _wal(cur) -> None:
    """WAL mode (kept in the file once set). Switching takes an exclusive lock without
    waiting on the busy timeout, so processes opening a new store together retry."""
    deadline = time.monotonic() + 30
    while cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_engine(url: URL) -> Engine:
    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _setup(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # pysqlite's own BEGIN handling off: ours below
        cur = dbapi_conn.cursor()
        for pragma in ("busy_timeout=30000", "synchronous=NORMAL", "foreign_keys=ON"):
            cur.execute(f"PRAGMA {pragma}")
        _wal(cur)
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        write = conn.get_execution_options().get("forge_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgres_engine(url: URL, async_commit: bool = False) -> Engine:
    # Small pools: a pool process writes one candidate at a time. No pre-ping (a round
    # trip per write): a dropped connection invalidates the pool and the write retries.
    marks = ({"isolation_level": "AUTOCOMMIT"}, {"options": "-c synchronous_commit=off"}) \
        if async_commit else ({}, {})
    return create_engine(url, pool_size=2, max_overflow=4, pool_recycle=1800, **marks[0],
                         connect_args={"connect_timeout": 10,
                                       "application_name": "dream-foundry", **marks[1]})


def engine_for(url: str, *, migrate: bool = True, async_commit: bool = False) -> Engine:
    """This process's engine for ``url``, its schema at HEAD (migrated on first use).

    ``async_commit``: for PostgreSQL, an autocommit engine whose commits do not wait for
    the WAL flush (``synchronous_commit=off``): for in-flight marks, which the finished
    write supersedes; a server crash may forget the newest ones, never a finished run.
    On SQLite (no fsync per commit anyway) it is the same engine.
    """
    key = str(url)
    if async_commit and parse_url(key).get_backend_name() == "postgresql":
        engine_for(key, migrate=migrate)  # the schema check, once
        key = f"{key}#async"
    engine = _ENGINES.get(key)
    if engine is None:
        with _LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                parsed = parse_url(key.removesuffix("#async"))
                engine = (_sqlite_engine(parsed) if parsed.get_backend_name() == "sqlite"
                          else _postgres_engine(parsed, key.endswith("#async")))
                _ENGINES[key] = engine
    if key.endswith("#async"):
        return engine
    if migrate and key not in _READY:
        with _LOCK:
            if key not in _READY:
                ensure_schema(engine)
                _READY.add(key)
    return engine


def current_revision(conn) -> str | None:
    """The store's Alembic revision; None for an empty database."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def ensure_schema(engine: Engine) -> bool:
    """Upgrade the store to HEAD if it is behind; True if a migration ran.

    The check is one query without importing Alembic; the upgrade runs in one
    transaction that holds the migration lock, so concurrent first uses migrate once.
    """
    with engine.connect() as conn:
        if current_revision(conn) == HEAD:
            return False
    # start-up: Alembic loads only when a schema is behind
    from alembic import command
    from alembic.script import ScriptDirectory

    with engine.execution_options(**WRITE).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        now = current_revision(conn)
        if now == HEAD:
            return False  # another process migrated it while we waited for the lock
        cfg = alembic_config(conn)
        known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
        if now is not None and now not in known:
            raise StoreError(
                f"the store at {redact_url(str(engine.url))} is at schema revision {now!r}, "
                f"newer than this installation knows ({HEAD}): upgrade Dream Foundry here")
        command.upgrade(cfg, "head")
    return True


def dispose_all() -> None:
    """Close every engine of this process (tests; a store that moved)."""
    with _LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
        _READY.clear()


def _forget_after_fork() -> None:
    """In a forked child: drop the parent's pools without closing its connections (and a
    lock another thread of the parent may have held at the fork)."""
    global _LOCK
    _LOCK = threading.Lock()
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()
    _READY.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def describe_error(exc: BaseException, url: str) -> str:
    """One short line for a database error: the driver's first line, the password never.

    SQLAlchemy's own message carries the statement and its parameters (a candidate's
    whole output): the driver's first line says what went wrong.
    """
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = (str(orig).strip().splitlines() or [""])[0][:300]
    password = make_url(url).password if "://" in url else None
    if password:
        first = first.replace(str(password), "***")
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__
