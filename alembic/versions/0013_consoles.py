"""Serial console capture: each board's console output per boot attempt, and
which engine process captures it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from corral.store.schema import BigID, UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_attempts",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("board", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("history_id", sa.BigInteger, nullable=True),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("chars", sa.BigInteger, nullable=False),
        sa.Column("dropped", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("board", "attempt", name="uq_console_attempts_board_attempt"),
    )
    op.create_table(
        "console_chunks",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("attempt_id", sa.BigInteger, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_console_chunks_attempt_id_start", "console_chunks",
                    ["attempt_id", "start"])
    op.create_table(
        "console_claims",
        sa.Column("board", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("until", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("board", name="pk_console_claims"),
    )


def downgrade() -> None:
    op.drop_table("console_claims")
    op.drop_index("ix_console_chunks_attempt_id_start", table_name="console_chunks")
    op.drop_table("console_chunks")
    op.drop_table("console_attempts")
