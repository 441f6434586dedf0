"""Initial store: runs, candidates (per run), results (per candidate and trial).

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("competition", sa.String(200), nullable=True),
        sa.Column("objective", sa.Text(), nullable=False),
        sa.Column("execution_mode", sa.String(20), nullable=False),
        sa.Column("judge", sa.String(100), nullable=False),
        sa.Column("timestamp", TS, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("candidates_total", sa.Integer(), nullable=False),
        sa.Column("definition_sha256", sa.String(64), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=False),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.Column("winner_id", sa.String(200), nullable=True),
        sa.Column("winner_score", sa.Float(), nullable=True),
        sa.Column("sandboxes_alive", sa.Integer(), nullable=True),
        sa.Column("discord", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("published_at", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_runs"),
    )
    op.create_index("ix_runs_competition_timestamp", "runs", ["competition", "timestamp"])
    op.create_index("ix_runs_timestamp", "runs", ["timestamp"])

    op.create_table(
        "candidates",
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("candidate_id", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("script", sa.Text(), nullable=False),
        sa.Column("artifact", sa.Text(), nullable=True),
        sa.Column("score_success", sa.Float(), nullable=True),
        sa.Column("quality_score", sa.Float(), nullable=True),
        sa.Column("speed_score", sa.Float(), nullable=True),
        sa.Column("total_score", sa.Float(), nullable=True),
        sa.Column("qualified", sa.Boolean(), nullable=True),
        sa.Column("gates", sa.JSON(), nullable=True),
        sa.Column("disqualified_reason", sa.Text(), nullable=True),
        sa.Column("quality_details", sa.JSON(), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.run_id"], name="fk_candidates_run_id_runs",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "candidate_id", name="pk_candidates"),
    )
    op.create_index("ix_candidates_candidate_id_run_id", "candidates",
                    ["candidate_id", "run_id"])

    op.create_table(
        "results",
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("candidate_id", sa.String(200), nullable=False),
        sa.Column("trial", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("worker", sa.String(300), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("sandbox_id", sa.String(300), nullable=True),
        sa.Column("execution_mode", sa.String(20), nullable=True),
        sa.Column("isolation", sa.Text(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("timed_out", sa.Boolean(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("runtime_seconds", sa.Float(), nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("output_dropped_bytes", sa.Integer(), nullable=True),
        sa.Column("artifact_content", sa.Text(), nullable=True),
        sa.Column("artifact_truncated", sa.Boolean(), nullable=True),
        sa.Column("warnings", sa.JSON(), nullable=True),
        sa.Column("log", sa.JSON(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["run_id", "candidate_id"],
                                ["candidates.run_id", "candidates.candidate_id"],
                                name="fk_results_run_id_candidate_id_candidates",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "candidate_id", "trial", name="pk_results"),
    )


def downgrade() -> None:
    op.drop_table("results")
    op.drop_table("candidates")
    op.drop_table("runs")
