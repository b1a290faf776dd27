"""profiling jobs

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")


def upgrade() -> None:
    op.create_table(
        "profiling_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "state",
            sa.Enum(*STATES, name="job_state", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_profiling_jobs_state_created", "profiling_jobs", ["state", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_profiling_jobs_state_created", table_name="profiling_jobs")
    op.drop_table("profiling_jobs")
