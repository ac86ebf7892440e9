"""Jobs: specs as submitted, their internal form, failure comments.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from corral.store.schema import JSONText, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONDoc = (sa.JSON().with_variant(JSONB(), "postgresql")
           .with_variant(JSONText(), "mysql", "mariadb"))
BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("api_version", sa.String(32), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("spec_text", sa.Text, nullable=False),
        sa.Column("spec", JSONDoc, nullable=False),
        sa.Column("job_name", sa.String(200), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("fabric", sa.String(63), nullable=True),
        sa.Column("submitted_at", UTCDateTime, nullable=False),
        sa.Column("submitted_by", sa.String(200), nullable=True),
        sa.Column("failure_comment", sa.Text, nullable=True),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("name", name="uq_jobs_name"),
    )
    op.create_index("ix_jobs_priority_id", "jobs", ["priority", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_priority_id", table_name="jobs")
    op.drop_table("jobs")
