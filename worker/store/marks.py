"""In-flight marks on the driver: two statements per candidate, on a worker's hot path.

A mark is one idempotent UPDATE (``worker.store.write`` builds them) in its own
transaction. SQLAlchemy's per-execute machinery (connection and transaction objects,
events, compiled-parameter handling) cost more CPU than the statement itself, on a
2-core machine busy running candidates. So each statement is compiled once per dialect
and run on a pooled driver connection directly; its parameters go through the column
types' own bind processors, so a value is stored exactly as through SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine


class Prepared:
    """One Core statement compiled for one dialect, ready for the driver."""

    def __init__(self, stmt, dialect):
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        self.order = list(compiled.positiontup) if dialect.positional else None
        self.fixed = {name: bp.effective_value for name, bp in compiled.binds.items()
                      if not bp.required}
        self.procs = [(name, proc) for name, bp in compiled.binds.items()
                      if (proc := bp.type.dialect_impl(dialect).bind_processor(dialect))]

    def params(self, values: dict[str, Any]):
        p = {**self.fixed, **values}
        for name, proc in self.procs:
            p[name] = proc(p[name])
        return tuple(p[n] for n in self.order) if self.order is not None else p


class Marks:
    """Executes prepared marks on ``engine`` (autocommit: each statement commits)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect
        self._prepared: dict[int, Prepared] = {}

    def execute(self, stmt, values: dict[str, Any]) -> int:
        """Run ``stmt`` with ``values``; the rows it changed. Driver errors propagate."""
        prep = self._prepared.get(id(stmt))
        if prep is None:
            prep = self._prepared[id(stmt)] = Prepared(stmt, self.dialect)
        conn = self.engine.raw_connection()
        try:
            cur = conn.cursor()
            try:
                cur.execute(prep.sql, prep.params(values))
                return cur.rowcount
            finally:
                cur.close()
        except BaseException:
            conn.invalidate()  # a connection in an unknown state is not reused
            raise
        finally:
            conn.close()  # back to the pool
