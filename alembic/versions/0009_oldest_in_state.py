"""When the machine longest in each state entered it, beside the state counts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from corral.store.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("machine_state_counts",
                  sa.Column("oldest_entered_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    op.drop_column("machine_state_counts", "oldest_entered_at")
