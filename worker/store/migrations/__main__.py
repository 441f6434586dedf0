"""``python -m worker.store.migrations revision -m MESSAGE``: autogenerate a revision.

Against a throwaway SQLite store upgraded to the current head, so the new revision holds
exactly what the models changed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine

from worker.store.migrations import alembic_config


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.store.migrations")
    sub = ap.add_subparsers(dest="command", required=True)
    rev = sub.add_parser("revision", help="autogenerate a revision from the models")
    rev.add_argument("-m", "--message", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        with engine.begin() as conn:
            cfg = alembic_config(conn)
            command.upgrade(cfg, "head")
            command.revision(cfg, message=args.message, autogenerate=True)
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
