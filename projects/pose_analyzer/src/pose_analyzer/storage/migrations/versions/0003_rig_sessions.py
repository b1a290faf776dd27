"""rig sessions: sessions.cameras (the rig's views) and sessions.calibration

Revision ID: 0003_rigs
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_rigs"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("cameras", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("calibration", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("calibration")
        batch.drop_column("cameras")
