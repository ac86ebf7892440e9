"""The history counter: on MariaDB and MySQL, history ids are handed out from
one row, taken just before commit, so that they are committed in id order
(the event stream's horizon; docs/http-api.md#the-event-stream).

SQLite and PostgreSQL keep the table but never use it (their ids come from
the table's own sequence); it starts at the newest id already written.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    counter = op.create_table(
        "history_counter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_id", sa.BigInteger, nullable=False),
    )
    newest = op.get_bind().execute(sa.text("SELECT COALESCE(MAX(id), 0) FROM history"))
    op.bulk_insert(counter, [{"id": 1, "last_id": int(newest.scalar_one())}])


def downgrade() -> None:
    op.drop_table("history_counter")
