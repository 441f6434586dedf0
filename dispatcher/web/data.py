"""Where the dashboard's pages get their data: the run store and forge.toml.

The store is opened lazily and kept: a SQLite store that does not exist yet (no run has
been recorded) is looked for again on the next request, and an empty store takes in the
run directories already there on first start, as ``forge list`` does. A store that
cannot be read is :class:`StoreUnavailable`, a 503 page naming the store without its
password; the detail goes to the log only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from dispatcher.competitions import CompetitionsError, competitions_path, load_competitions
from dispatcher.web.settings import WebSettings
from worker import config
from worker.store.importer import run_dirs

logger = logging.getLogger("dream_foundry.web")

NAMES_TTL = 30.0  # seconds the runs filter's list of competitions is kept


class StoreUnavailable(Exception):
    """The run store cannot be opened or read right now (shown as a 503 page)."""

    def __init__(self, display: str):
        super().__init__(display)
        self.display = display


class Data:
    """The store and the competitions file, as the pages read them."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.url = settings.database_url or config.database_url(settings.artifacts_dir)
        self.display = config.redact_url(self.url)
        self._store = None
        self._lock = threading.Lock()
        self._competitions: tuple[tuple[str, float], dict, str | None] | None = None
        self._names: tuple[float, list[str]] | None = None

    # ------------------------------------------------------------------ store

    def store(self):
        """The open store, or None while a SQLite store does not exist yet."""
        if self._store is not None:
            return self._store
        from worker.store import StoreError, open_store  # start-up: SQLAlchemy

        with self._lock:
            if self._store is not None:
                return self._store
            root = self.settings.artifacts_dir
            try:
                store = open_store(self.url, create=False)
                if store is None and os.path.isdir(root) and run_dirs(root):
                    store = open_store(self.url)  # first start: run directories to take in
                if store is not None:
                    store.import_if_empty(root)
            except StoreError as exc:
                logger.warning("dashboard: %s", exc)
                raise StoreUnavailable(self.display) from None
            self._store = store
            return store

    def read(self, method: str, *args, **kwargs):
        """``store.<method>(...)``; None (nothing recorded yet) when there is no store."""
        from worker.store import StoreError  # start-up: SQLAlchemy

        store = self.store()
        if store is None:
            return None
        try:
            return getattr(store, method)(*args, **kwargs)
        except StoreError as exc:
            logger.warning("dashboard: %s", exc)
            raise StoreUnavailable(self.display) from None

    def competition_names(self) -> list[str]:
        """Names of the competitions with runs (the runs filter's choices). The store's
        per-competition summary is a few queries per competition: kept for a while."""
        now = time.monotonic()
        cached = self._names
        if cached is not None and now - cached[0] < NAMES_TTL:
            return cached[1]
        names = sorted(c.name for c in (self.read("competitions") or []) if c.name)
        self._names = (now, names)
        return names

    # ------------------------------------------------------------------ forge.toml

    def competitions(self) -> tuple[dict, str | None]:
        """(forge.toml's competitions by name, the problem reading it or None); re-read
        when the file changes."""
        path = competitions_path(self.settings.competitions)
        try:
            stat = os.stat(path)
            key = (os.fspath(path), stat.st_mtime)
        except OSError:
            key = (os.fspath(path), -1.0)
        cached = self._competitions
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        try:
            comps, problem = load_competitions(path), None
        except CompetitionsError as exc:
            comps, problem = {}, str(exc)
        self._competitions = (key, comps, problem)
        return comps, problem


@dataclass(frozen=True)
class ScheduledCompetition:
    """A forge.toml competition as the competitions page shows it."""

    name: str
    objective: str
    schedule: str
    next_run: datetime | None  # None: disabled
    next_run_local: str
    execution: str
    post: bool


def scheduled(comps: dict, now: datetime | None = None) -> dict[str, ScheduledCompetition]:
    now = now or datetime.now(UTC)
    out = {}
    for name, comp in comps.items():
        nxt = comp.next_run(now) if comp.enabled else None
        local = f"{nxt.astimezone(comp.zone):%a %Y-%m-%d %H:%M %Z}" if nxt else "disabled"
        out[name] = ScheduledCompetition(name=name, objective=comp.objective,
                                         schedule=comp.describe_schedule(), next_run=nxt,
                                         next_run_local=local, execution=comp.execution,
                                         post=comp.post)
    return out
