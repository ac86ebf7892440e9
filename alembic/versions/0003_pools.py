"""Machine vars; pool assignments.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from corral.store.schema import JSONText, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSONDoc = (sa.JSON().with_variant(JSONB(), "postgresql")
           .with_variant(JSONText(), "mysql", "mariadb"))


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("vars", JSONDoc, nullable=False, server_default="{}"))
    op.create_table(
        "pool_assignments",
        sa.Column("cb_pool_name", sa.String(128), nullable=False),
        sa.Column("job_run_id", sa.String(64), nullable=False),
        sa.Column("assigned_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("cb_pool_name", name="pk_pool_assignments"),
    )
    op.create_index("ix_pool_assignments_job_run_id", "pool_assignments", ["job_run_id"])


def downgrade() -> None:
    op.drop_index("ix_pool_assignments_job_run_id", table_name="pool_assignments")
    op.drop_table("pool_assignments")
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("vars")
