"""The alembic revisions build exactly the schema the code declares."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

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


@pytest.mark.parametrize("start", ["0001", "0002", "0003", "0004", "0005", "0006"])
def test_upgrade_from_every_earlier_revision_reaches_the_declared_schema(db_url, start):
    """A database left at any earlier revision, with a machine in it, upgrades
    to head and matches the declared schema."""
    db = open_store(db_url)
    db.upgrade(start)
    assert db.current_revision() == start
    with db.sa.begin() as conn:
        conn.execute(text(
            "INSERT INTO machines (kind, name, state, state_entered_at, counters, epoch, attrs, "
            "created_at, updated_at) VALUES ('board', 'old', 'ready', :at, '{}', 1, '{}', "
            ":at, :at)"), {"at": datetime(2026, 1, 1)})
    db.upgrade()
    assert db.current_revision() == head_revision()
    with db.sa.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                metadata)
        vars_ = conn.execute(text("SELECT vars FROM machines WHERE name = 'old'")).scalar()
    db.dispose()
    assert diff == []
    # Read raw: text on SQLite and MariaDB, a decoded jsonb on PostgreSQL.
    assert (json.loads(vars_) if isinstance(vars_, str) else vars_) == {}


def test_the_revision_start_up_checks_for_is_the_newest_migration():
    from corral.store import SCHEMA_REVISION

    assert head_revision() == SCHEMA_REVISION
