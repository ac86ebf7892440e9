"""Machines per kind and state, kept by the workers for /metrics.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from corral.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machine_state_counts",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("machines", sa.BigInteger, nullable=False),
        sa.Column("counted_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("kind", "state", name="pk_machine_state_counts"),
    )


def downgrade() -> None:
    op.drop_table("machine_state_counts")
