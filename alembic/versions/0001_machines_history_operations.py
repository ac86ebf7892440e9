"""Machines, history and the operations outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Written out column by column (not imported from the live schema) so that this
revision keeps creating exactly these tables whatever the schema becomes.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from corral.store.schema import JSONText, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONDoc = (sa.JSON().with_variant(JSONB(), "postgresql")
           .with_variant(JSONText(), "mysql", "mariadb"))
BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "machines",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("state_entered_at", UTCDateTime, nullable=False),
        sa.Column("deadline", UTCDateTime, nullable=True),
        sa.Column("counters", JSONDoc, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("attrs", JSONDoc, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_machines"),
        sa.UniqueConstraint("kind", "name", name="uq_machines_kind_name"),
    )
    op.create_index("ix_machines_deadline", "machines", ["deadline"])
    op.create_index("ix_machines_kind_state", "machines", ["kind", "state"])

    op.create_table(
        "history",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("machine_id", BigID, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("from_state", sa.String(64), nullable=False),
        sa.Column("to_state", sa.String(64), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("payload", JSONDoc, nullable=True),
        sa.Column("operation_id", BigID, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_history"),
    )
    op.create_index("ix_history_machine_id_id", "history", ["machine_id", "id"])

    op.create_table(
        "operations",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("machine_id", BigID, nullable=False),
        sa.Column("machine_epoch", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("payload", JSONDoc, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_after", UTCDateTime, nullable=False),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime, nullable=True),
        sa.Column("result", JSONDoc, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_operations"),
    )
    op.create_index("ix_operations_status_run_after", "operations", ["status", "run_after"])
    op.create_index("ix_operations_machine_id", "operations", ["machine_id"])


def downgrade() -> None:
    op.drop_table("operations")
    op.drop_table("history")
    op.drop_table("machines")
