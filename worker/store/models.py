"""The store's tables: runs, their candidates, and each candidate's results (trials).

Every row has a natural unique key, so every write is an idempotent upsert:

* ``runs``        (run_id)
* ``candidates``  (run_id, candidate_id): who the candidate is in this run and its score
* ``results``     (run_id, candidate_id, trial): one execution's state and outcome. A run
  today has trial 0 only; running each candidate K times adds rows, not columns.

The migrations in ``migrations/versions`` create exactly these tables; a test compares
them, so a model change without its migration fails.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Run, candidate and candidate states (the values of the ``status``/``state`` columns).
RUN_STATUSES = ("queued", "running", "finished", "failed")
CANDIDATE_STATES = ("queued", "waiting", "running", "done")


def clean_text(value: str, dialect_name: str) -> str:
    """Text any backend accepts and the run directory agrees with.

    Lone surrogates (a candidate's output may carry them through JSON) become ``?``,
    exactly as the run directory's files encode them. PostgreSQL's text cannot hold
    NUL at all: there it becomes U+FFFD (SQLite keeps it).
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    if dialect_name == "postgresql" and "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value, "")
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(str(k), ""): _clean_json(v) for k, v in value.items()}
    return value


class SafeText(TypeDecorator):
    """Text that holds anything a candidate wrote (see :func:`clean_text`)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else clean_text(value, dialect.name)


class SafeJSON(TypeDecorator):
    """JSON (not JSONB: key order kept, as in the run directory) of cleaned strings."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else _clean_json(value)


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Stable constraint names, so later migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Run(Base):
    """One competition run, from the moment it is published."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    competition: Mapped[str | None] = mapped_column(String(200))
    objective: Mapped[str] = mapped_column(SafeText)
    execution_mode: Mapped[str] = mapped_column(String(20))
    judge: Mapped[str] = mapped_column(String(100))
    # RunSpec.timestamp: when the run was planned (the run's time everywhere).
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(20))  # RUN_STATUSES
    candidates_total: Mapped[int] = mapped_column(Integer)
    definition_sha256: Mapped[str] = mapped_column(String(64), default="")
    # The run directory's path on the machine that wrote it (ForgeResult.artifacts_dir).
    run_dir: Mapped[str] = mapped_column(SafeText, default="")
    notes: Mapped[list] = mapped_column(SafeJSON, default=list)
    winner_id: Mapped[str | None] = mapped_column(String(200))
    winner_score: Mapped[float | None] = mapped_column(Float)
    sandboxes_alive: Mapped[int | None] = mapped_column(Integer)
    discord: Mapped[dict | None] = mapped_column(SafeJSON)  # the run's discord.json
    error: Mapped[str | None] = mapped_column(SafeText)  # why a failed run failed
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # first candidate ran
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # first finished write
    # ForgeResult fields without a column of their own (newer records' additions): they
    # round-trip without a migration; a field earns a column when something queries it.
    extra: Mapped[dict | None] = mapped_column(SafeJSON)

    __table_args__ = (
        Index(None, "competition", "timestamp"),
        Index(None, "timestamp"),
    )


class Candidate(Base):
    """A candidate in one run: its manifest entry and, once judged, its score."""

    __tablename__ = "candidates"

    run_id: Mapped[str] = mapped_column(
        String(200), ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)  # manifest order
    name: Mapped[str] = mapped_column(SafeText)
    description: Mapped[str] = mapped_column(SafeText, default="")
    script: Mapped[str] = mapped_column(SafeText, default="")
    # sha256 of its script, or of its project's bundle: the code the results came from.
    content_sha256: Mapped[str] = mapped_column(String(64), default="", server_default="")
    artifact: Mapped[str | None] = mapped_column(SafeText)  # path of its post in the run dir
    # The judge's Score; NULL until the run is judged.
    score_success: Mapped[float | None] = mapped_column(Float)
    quality_score: Mapped[float | None] = mapped_column(Float)
    speed_score: Mapped[float | None] = mapped_column(Float)
    total_score: Mapped[float | None] = mapped_column(Float)
    qualified: Mapped[bool | None] = mapped_column(Boolean)
    gates: Mapped[dict | None] = mapped_column(SafeJSON)
    disqualified_reason: Mapped[str | None] = mapped_column(SafeText)
    quality_details: Mapped[dict | None] = mapped_column(SafeJSON)
    rank: Mapped[int | None] = mapped_column(Integer)
    extra: Mapped[dict | None] = mapped_column(SafeJSON)  # Score fields without a column

    __table_args__ = (Index(None, "candidate_id", "run_id"),)  # a candidate's history


class Result(Base):
    """One execution of a candidate: in-flight state, then its CandidateResult."""

    __tablename__ = "results"

    run_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    trial: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    state: Mapped[str] = mapped_column(String(10))  # CANDIDATE_STATES
    worker: Mapped[str | None] = mapped_column(String(300))
    attempt: Mapped[int | None] = mapped_column(Integer)
    sandbox_id: Mapped[str | None] = mapped_column(String(300))
    execution_mode: Mapped[str | None] = mapped_column(String(20))
    isolation: Mapped[str | None] = mapped_column(SafeText)
    success: Mapped[bool | None] = mapped_column(Boolean)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    timed_out: Mapped[bool | None] = mapped_column(Boolean)
    error_message: Mapped[str | None] = mapped_column(SafeText)
    runtime_seconds: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    output: Mapped[str | None] = mapped_column(SafeText)  # the kept tail
    output_dropped_bytes: Mapped[int | None] = mapped_column(Integer)
    artifact_content: Mapped[str | None] = mapped_column(SafeText)
    artifact_truncated: Mapped[bool | None] = mapped_column(Boolean)
    warnings: Mapped[list | None] = mapped_column(SafeJSON)
    log: Mapped[list | None] = mapped_column(SafeJSON)
    timings: Mapped[dict | None] = mapped_column(SafeJSON)
    extra: Mapped[dict | None] = mapped_column(SafeJSON)  # CandidateResult fields without a column

    __table_args__ = (
        ForeignKeyConstraint(["run_id", "candidate_id"],
                             ["candidates.run_id", "candidates.candidate_id"],
                             ondelete="CASCADE"),
    )
