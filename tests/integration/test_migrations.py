"""The alembic revisions build exactly the schema the code declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from corral.store.db import create_db_engine
from corral.store.migrate import current_revision, head_revision, require_current, upgrade
from corral.store.schema import metadata


def test_upgrade_matches_the_declared_schema(db_url):
    db = create_db_engine(db_url)
    upgrade(db)
    assert current_revision(db) == head_revision()
    require_current(db)
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                metadata)
    db.dispose()
    assert diff == []


def test_upgrade_is_idempotent(db_url):
    db = create_db_engine(db_url)
    upgrade(db)
    upgrade(db)
    assert current_revision(db) == head_revision()
    db.dispose()
