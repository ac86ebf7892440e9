"""Boot resource imports and what each published.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from corral.store.schema import JSONText, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSONDoc = (sa.JSON().with_variant(JSONB(), "postgresql")
           .with_variant(JSONText(), "mysql", "mariadb"))
BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bootres_imports",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("storage", sa.Text, nullable=False),
        sa.Column("sources", JSONDoc, nullable=False),
        sa.Column("snapshot", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bootres_imports"),
    )
    op.create_table(
        "bootres_published",
        sa.Column("id", BigID, primary_key=True, autoincrement=True),
        sa.Column("import_id", BigID, nullable=False),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("subarch", sa.String(64), nullable=False),
        sa.Column("release", sa.String(64), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("product", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bootres_published"),
    )
    op.create_index("ix_bootres_published_import_id", "bootres_published", ["import_id"])


def downgrade() -> None:
    op.drop_index("ix_bootres_published_import_id", table_name="bootres_published")
    op.drop_table("bootres_published")
    op.drop_table("bootres_imports")
