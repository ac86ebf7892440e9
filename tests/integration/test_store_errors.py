"""What the store raises instead of a driver's exceptions, on every backend:
Unavailable when the database cannot be reached, DuplicateKey when a unique
key refuses a row, SchemaProblem when a table is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.errors import DuplicateKey, SchemaProblem, Unavailable
from corral.store import open_store

CORRAL = str(Path(sys.executable).with_name("corral"))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
NOWHERE = ["postgresql://postgres@127.0.0.1:1/corral", "mysql://root@127.0.0.1:1/corral"]


@pytest.mark.parametrize("url", NOWHERE)
def test_a_database_that_cannot_be_reached_is_unavailable(url):
    store = open_store(url)
    with pytest.raises(Unavailable, match=r"^database unavailable: "), store.unit() as tx:
        tx.ping()
    with pytest.raises(Unavailable), store.events() as events:
        events.machines.lock("board", "b1")
    result = subprocess.run([CORRAL, "board", "list"], capture_output=True, text=True,
                            env=os.environ | {"CORRAL_DATABASE_URL": url}, timeout=60)
    assert result.returncode == 6
    assert result.stderr.startswith("error: database unavailable: ")
    assert "Traceback" not in result.stderr


def test_a_second_row_with_the_same_key_is_a_duplicate_key(store):
    def insert() -> None:
        with store.unit() as tx:
            tx.machines.insert(kind="board", name="b1", state="new", attrs={}, now=NOW,
                              deadline=None)

    insert()
    with pytest.raises(DuplicateKey):
        insert()
    with store.unit() as tx:
        assert [m.name for m in tx.machines.list("board")] == ["b1"]


@pytest.mark.parametrize("backend", ["postgres", "mariadb"])
def test_a_missing_table_is_a_schema_problem(backend, tmp_path):
    from tests.conftest import scratch_database

    with scratch_database(backend, tmp_path) as url:  # not migrated
        store = open_store(url)
        with pytest.raises(SchemaProblem, match="run `corral db upgrade`"), \
                store.unit() as tx:
            tx.machines.list("board")
        store.dispose()
