"""The alembic revisions build exactly the schema the code declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from corral.store import open_store
from corral.store.migrate import head_revision
from corral.store.schema import metadata


def test_upgrade_matches_the_declared_schema(db_url):
    db = open_store(db_url)
    db.upgrade()
    assert db.current_revision() == head_revision()
    db.require_current()
    with db.sa.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                metadata)
    db.dispose()
    assert diff == []


def test_upgrade_is_idempotent(db_url):
    db = open_store(db_url)
    db.upgrade()
    db.upgrade()
    assert db.current_revision() == head_revision()
    db.dispose()
