"""Health checks: every judged check, each board's health and the shared
equipment found degraded.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from corral.store.schema import BigID, UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "health_results",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("board", sa.String(200), nullable=False),
        sa.Column("check_name", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("blame", sa.String(16), nullable=False),
        sa.Column("step", sa.String(32), nullable=True),
        sa.Column("equipment", sa.String(200), nullable=True),
        sa.Column("image", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("history_id", BigID, nullable=True),
        sa.Column("at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_health_results_board_id", "health_results", ["board", "id"])
    op.create_index("ix_health_results_equipment_at", "health_results", ["equipment", "at"])
    op.create_index("ix_health_results_at", "health_results", ["at"])
    op.create_table(
        "board_health",
        sa.Column("board", sa.String(200), nullable=False),
        sa.Column("check_name", sa.String(64), nullable=True),
        sa.Column("checked_at", UTCDateTime, nullable=True),
        sa.Column("passed_at", UTCDateTime, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("loop", sa.Integer, nullable=False),
        sa.Column("rule", sa.Text, nullable=True),
        sa.Column("counted_after", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("board", name="pk_board_health"),
    )
    op.create_table(
        "equipment_health",
        sa.Column("equipment", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("since", UTCDateTime, nullable=False),
        sa.Column("retry_at", UTCDateTime, nullable=True),
        sa.Column("backoff_s", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("equipment", name="pk_equipment_health"),
    )


def downgrade() -> None:
    op.drop_table("equipment_health")
    op.drop_table("board_health")
    op.drop_index("ix_health_results_at", table_name="health_results")
    op.drop_index("ix_health_results_equipment_at", table_name="health_results")
    op.drop_index("ix_health_results_board_id", table_name="health_results")
    op.drop_table("health_results")
