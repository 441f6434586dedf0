"""The CLI's side of the run store: ``forge import``, and the store ``list``/``status`` read.

``forge list`` and ``forge status`` read the store first, so they work on a machine
that shares no disk with the workers (``FORGE_DATABASE_URL``). A store that cannot be
reached is one warning line, and they fall back to the run directories here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from worker import config
from worker.store.importer import SUMMARY, run_dirs


def read_store(artifacts_dir: str):
    """(the store to read, or None; a warning when it could not be reached).

    A SQLite store that does not exist yet is created only when there are run
    directories for it to take in (first start); a bad URL raises ConfigError.
    """
    if not config.store_enabled():
        return None, None
    # start-up: SQLAlchemy
    from worker.store import StoreError, open_store

    try:
        store = open_store(artifacts_dir=artifacts_dir, create=False)
        if store is None and run_dirs(artifacts_dir):
            store = open_store(artifacts_dir=artifacts_dir)
        if store is not None:
            store.import_if_empty(artifacts_dir)
        return store, None
    except StoreError as exc:
        return None, str(exc)


def warn(problem: str, root: str) -> None:
    print(f"forge: warning: {problem}; reading the run directories in {root} instead",
          file=sys.stderr)


def describe(detail) -> tuple[str, int]:
    """The status line of a run the store knows but that has not finished."""
    s = detail.summary
    n = s.states
    if s.status == "failed":
        return f"run {s.run_id}: failed: {s.error or 'unknown error'}", 1
    return (f"run {s.run_id}: {s.status} ({n.done} done / {s.candidates_total} total; "
            f"{n.running} running, {n.waiting} waiting, {n.queued} queued; "
            f"{n.failed} failed)"), 0


def cmd_import(args: argparse.Namespace) -> int:
    # start-up: SQLAlchemy
    from worker.store import StoreError, open_store

    path = Path(args.path or config.artifacts_dir())
    if not path.exists():
        print(f"forge: error: {path} does not exist: give an artifacts directory or a run "
              "directory (one holding summary.json)", file=sys.stderr)
        return 2
    artifacts = path.parent if (path / SUMMARY).is_file() else path
    found = run_dirs(path)
    try:
        store = open_store(artifacts_dir=os.fspath(artifacts))
        report = store.import_runs(path)
        owed = store.drain(artifacts)
    except StoreError as exc:
        print(f"forge: error: {exc}; start the database or fix FORGE_DATABASE_URL",
              file=sys.stderr)
        return 2
    imported = sorted(set(report.imported) | set(owed.imported))
    print(f"Imported {len(imported)} run(s) from {path} into {store.display}"
          + ("" if found else " (no run directories there)"))
    for where, reason in report.failed + owed.failed:
        print(f"  not imported: {where}: {reason}", file=sys.stderr)
    return 1 if report.failed or owed.failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="load run directories into the run store",
        description="Load existing run directories (an artifacts directory, or one run "
                    "directory) into the run store, and write any store writes still "
                    "owed. Safe to repeat: a run already there is rewritten identically.")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="artifacts directory or run directory (default: FORGE_ARTIFACTS_DIR "
                        "or artifacts/)")
    p.set_defaults(func=cmd_import)
