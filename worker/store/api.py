"""``Store``: one store URL's reads and writes, with database errors as ``StoreError``.

Reads return the typed records of ``worker.store.read``; writes are the upserts of
``worker.store.write``, each in its own transaction (retried once on a connection the
server dropped). Nothing here is best effort: the hooks in ``worker.store.hooks`` decide
what a failure means for a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from worker import config
from worker.records import CandidateResult, ForgeResult, RunSpec
from worker.store import read, write
from worker.store.db import StoreError, describe_error, engine_for, parse_url, sqlite_path

T = TypeVar("T")

_IMPORT_CHECKED: set[str] = set()  # URLs this process looked at for a first-start import


class Store:
    """The run store at ``url`` (migrated to the current schema on first use)."""

    def __init__(self, url: str):
        self.url = parse_url(url).render_as_string(hide_password=False)
        self.display = config.redact_url(self.url)
        try:
            self.engine = engine_for(self.url)
        except StoreError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise self._error("open", exc) from None
        from worker.store.db import WRITE

        self._writer = self.engine.execution_options(**WRITE)
        self._marker = None  # the in-flight marks' engine, made on first use

    @property
    def backend(self) -> str:
        return self.engine.dialect.name  # "sqlite" | "postgresql"

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        return StoreError(f"cannot {doing} the run store at {self.display} "
                          f"({describe_error(exc, self.url)})")

    def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            with self.engine.connect() as conn:
                return fn(conn, *args, **kwargs)
        except SQLAlchemyError as exc:
            raise self._error("read", exc) from None

    def _write(self, fn: Callable[..., T], *args: Any, transient: bool = False,
               **kwargs: Any) -> T:
        """``fn(conn, ...)`` in one write transaction. ``transient``: state a later write
        supersedes (a run queued), which PostgreSQL commits without waiting for its WAL
        flush: a server crash may forget it, and the finished write brings it all back."""
        for attempt in (1, 2):
            try:
                with self._writer.begin() as conn:
                    if transient and self.backend == "postgresql":
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO off")
                    return fn(conn, *args, **kwargs)
            except DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated:
                    continue  # the server dropped a pooled connection: a fresh one
                raise self._error("write", exc) from None
            except SQLAlchemyError as exc:
                raise self._error("write", exc) from None
        raise AssertionError("unreachable")

    def _mark(self, fn: Callable[..., int], *args: Any, **kwargs: Any) -> int:
        """An in-flight mark: each statement commits by itself (``worker.store.marks``),
        and on PostgreSQL without waiting for its WAL flush. A server crash may forget the
        newest marks (the finished write supersedes them), never a finished run."""
        if self._marker is None:
            from worker.store.marks import Marks

            self._marker = Marks(engine_for(self.url, async_commit=True))
        errors = (self.engine.dialect.loaded_dbapi.Error, SQLAlchemyError)
        for attempt in (1, 2):
            try:
                return fn(self._marker.execute, *args, **kwargs)
            except errors as exc:
                if attempt == 2:
                    raise self._error("write", exc) from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ writes

    def write_queued(self, run: RunSpec, at: datetime | None = None) -> None:
        self._write(write.record_queued, run, at, transient=True)

    def mark_running(self, run_id: str, candidate_id: str, *, worker: str | None = None,
                     trial: int = 0) -> int:
        return self._mark(write.mark_state, self.url, run_id, candidate_id, "running",
                          worker=worker, trial=trial)

    def mark_waiting(self, run_id: str, candidate_id: str, *, worker: str | None = None,
                     trial: int = 0) -> int:
        return self._mark(write.mark_state, self.url, run_id, candidate_id, "waiting",
                          worker=worker, trial=trial)

    def mark_done(self, run_id: str, result: CandidateResult, trial: int = 0) -> int:
        return self._mark(write.mark_done, run_id, result, trial)

    def write_finished(self, result: ForgeResult, at: datetime | None = None) -> None:
        self._write(write.record_finished, result, at)

    def mark_failed(self, run_id: str, error: str) -> int:
        return self._write(write.mark_failed, run_id, error)

    # ------------------------------------------------------------------ reads

    def list_runs(self, *, competition: str | None = None, status: str | None = None,
                  page: int = 1, per_page: int = 50) -> read.Page[read.RunSummary]:
        return self._read(read.list_runs, competition=competition, status=status,
                          page=page, per_page=per_page)

    def run_summary(self, run_id: str) -> read.RunSummary | None:
        return self._read(read.run_summary, run_id)

    def get_run(self, run_id: str) -> read.RunDetail | None:
        return self._read(read.get_run, run_id)

    def run_states(self, run_id: str) -> list[read.CandidateState]:
        return self._read(read.run_states, run_id)

    def candidate_history(self, candidate_id: str, *, competition: str | None = None,
                          limit: int = 100) -> list[read.HistoryEntry]:
        return self._read(read.candidate_history, candidate_id, competition=competition,
                          limit=limit)

    def competitions(self) -> list[read.CompetitionSummary]:
        return self._read(read.competitions)

    def season_runs(self, competition: str, *, since: datetime | None = None,
                    exclude: str | None = None) -> list:
        """The competition's finished runs as ``worker.judge.season.SeasonRun``s."""
        return self._read(read.season_runs, competition, since=since, exclude=exclude)

    def load_result(self, run_id: str) -> ForgeResult | None:
        """The finished run's ForgeResult (summary.json's content, with the full results
        and the Discord record); None while it runs or if unknown."""
        detail = self.get_run(run_id)
        return detail.forge_result() if detail is not None else None

    def report(self, run_id: str, fmt: str = "html") -> str | None:
        """The run's report.md/report.html, rendered from the store: the report is a pure
        function of the ForgeResult, so it is the run directory's file, byte for byte."""
        from worker import report

        result = self.load_result(run_id)
        if result is None:
            return None
        result.discord = None  # the run directory's report predates the post
        return "".join(report.html_parts(result) if fmt == "html"
                       else report.markdown_parts(result))

    def has_runs(self) -> bool:
        return self._read(read.has_runs)

    # ------------------------------------------------------------------ import

    def import_runs(self, path: str | os.PathLike):
        from worker.store.importer import import_runs

        return import_runs(self, path)

    def import_if_empty(self, artifacts_dir: str | os.PathLike):
        """First start: an empty store takes in the run directories already there (once
        per process and URL; cheap afterwards). Returns the ImportReport, or None."""
        from worker.store.importer import run_dirs

        key = f"{self.url}|{os.path.abspath(artifacts_dir)}"
        if key in _IMPORT_CHECKED:
            return None
        _IMPORT_CHECKED.add(key)
        if self.has_runs() or not run_dirs(artifacts_dir):
            return None
        return self.import_runs(artifacts_dir)

    def drain(self, artifacts_dir: str | os.PathLike):
        """Load the runs whose store write is owed (see ``worker.store.importer``)."""
        from worker.store.importer import drain

        return drain(self, artifacts_dir)


def open_store(url: str | None = None, *, artifacts_dir: str | os.PathLike | None = None,
               create: bool = True) -> Store | None:
    """The store at ``url`` (default: :func:`worker.config.database_url` for
    ``artifacts_dir``). ``create=False``: None for a SQLite file that does not exist
    yet (a reader or an in-flight mark never creates one). Raises StoreError (the store
    cannot be reached) or ConfigError (the URL is wrong)."""
    url = url or config.database_url(artifacts_dir)
    if not create:
        path = sqlite_path(url)
        if path is not None and not path.is_file():
            return None
    return Store(url)
