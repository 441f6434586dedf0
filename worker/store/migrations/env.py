"""Alembic's environment: always online, on the connection the caller hands over.

``worker.store.db`` opens the transaction (and takes the migration lock) itself, so
Alembic runs inside it: a store is either at the new revision or untouched.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import TypeDecorator

from worker.store.models import Base


def _render_item(kind, obj, _autogen_context):
    """Revisions name plain SQLAlchemy types, never the models' TypeDecorators: a revision
    must keep working whatever later happens to worker/store/models.py."""
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("worker.store migrations run from code: pass a connection "
                       "(worker.store.migrations.alembic_config(connection))")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite",
                  compare_type=True, render_item=_render_item)
with context.begin_transaction():
    context.run_migrations()
