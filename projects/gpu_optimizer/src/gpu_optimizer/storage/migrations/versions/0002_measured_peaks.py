"""measured peaks of the fleet's GPUs

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "measured_peaks",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gpu_name", sa.String(128), nullable=False),
        sa.Column("driver_version", sa.String(32), nullable=False),
        sa.Column("gpu_total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("node", sa.String(128), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("optimizer", sa.String(16), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("peak_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_allocated_bytes", sa.BigInteger(), nullable=True),
        sa.Column("max_reserved_bytes", sa.BigInteger(), nullable=True),
        sa.Column("estimated_peak_bytes", sa.BigInteger(), nullable=True),
        sa.Column("torch_version", sa.String(32), nullable=False),
    )
    op.create_index("ix_measured_peaks_gpu", "measured_peaks", ["gpu_name", "driver_version"])
    op.create_index(
        "ix_measured_peaks_workload", "measured_peaks", ["model", "mode", "optimizer", "dtype"]
    )


def downgrade() -> None:
    op.drop_index("ix_measured_peaks_workload", table_name="measured_peaks")
    op.drop_index("ix_measured_peaks_gpu", table_name="measured_peaks")
    op.drop_table("measured_peaks")
