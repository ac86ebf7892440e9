"""Leases: requests for boards, who held which board when, and each board's
lease epoch and holder.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from corral.store.schema import BigID, UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("share", sa.String(200), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("board", sa.String(200), nullable=True),
        sa.Column("selector", sa.Text, nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("release", sa.String(200), nullable=True),
        sa.Column("duration_s", sa.Integer, nullable=False),
        sa.Column("heartbeat_s", sa.Integer, nullable=True),
        sa.Column("on_return", sa.String(16), nullable=False),
        sa.Column("purpose", sa.Text, nullable=True),
        sa.Column("requested_at", UTCDateTime, nullable=False),
        sa.Column("wait_until", UTCDateTime, nullable=True),
        sa.Column("activated_at", UTCDateTime, nullable=True),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("heartbeat_at", UTCDateTime, nullable=True),
        sa.Column("warned_at", UTCDateTime, nullable=True),
        sa.Column("ended_by", sa.String(16), nullable=True),
        sa.Column("ended_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("name", name="uq_leases_name"),
    )
    op.create_index("ix_leases_share", "leases", ["share"])
    op.create_index("ix_leases_owner", "leases", ["owner"])
    op.create_table(
        "lease_boards",
        sa.Column("lease_id", BigID, nullable=False),
        sa.Column("board", sa.String(200), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("held_at", UTCDateTime, nullable=False),
        sa.Column("released_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("lease_id", "board", name="pk_lease_boards"),
    )
    op.create_index("ix_lease_boards_board_held_at", "lease_boards", ["board", "held_at"])
    op.create_table(
        "board_holds",
        sa.Column("board", sa.String(200), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("lease_id", BigID, nullable=True),
        sa.Column("since", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("board", name="pk_board_holds"),
    )


def downgrade() -> None:
    op.drop_table("board_holds")
    op.drop_index("ix_lease_boards_board_held_at", table_name="lease_boards")
    op.drop_table("lease_boards")
    op.drop_index("ix_leases_owner", table_name="leases")
    op.drop_index("ix_leases_share", table_name="leases")
    op.drop_table("leases")
