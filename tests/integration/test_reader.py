"""The bare-driver reader behind the CLI's read commands: the same rows, values
and errors as the store on every backend, nothing created or imported that a
look does not need."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from corral.engine.reads import Reads
from corral.errors import SchemaNotCurrent, Unavailable, UnknownMachine
from corral.store.reader import open_reader
from corral.store.revision import SCHEMA_REVISION

CORRAL = str(Path(sys.executable).with_name("corral"))


def _fleet(engine, clock) -> None:
    engine.import_machines("board", {f"r{i:02d}": {"mac": f"02:00:00:00:00:{i:02x}",
                                                   "nested": {"deep": [1, 2.5, None]}}
                                     for i in range(1, 13)})
    for name in ("r03", "r07", "r11"):
        engine.force_state("board", name, "failed_pinging", actor="t", reason="bad ✓")
    clock.advance(1)
    engine.fire("board", "r01", "maintenance", source="operator", actor="t",
                payload={"why": "test", "n": 7})


def test_the_reader_reads_what_the_store_reads(engine, clock, migrated_url):
    _fleet(engine, clock)
    reader = open_reader(migrated_url)
    assert reader is not None
    try:
        reader.require_current()
        fast = Reads(engine.machines, reader.session)
        slow = engine.reads
        assert fast.get("board", "r01") == slow.get("board", "r01")
        assert fast.get("board", "r01").state_entered_at.utcoffset() == timedelta(0)
        for kwargs in ({}, {"limit": 5}, {"after": "r04", "limit": 3},
                       {"failed": True}, {"states": ["new"], "after": "r08"},
                       {"states": ["maintenance", "failed_pinging"], "failed": True}):
            assert fast.list_machines("board", **kwargs) == slow.list_machines(
                "board", **kwargs), kwargs
        assert [fast.describe(r) for r in fast.list_machines("board")] == [
            slow.describe(r) for r in slow.list_machines("board")]
        newest = slow.history("board", "r01", limit=10)
        assert fast.history("board", "r01", limit=10) == newest
        assert newest[0].payload == {"why": "test", "n": 7}
        assert fast.history("board", "r01", limit=1, before_id=newest[0].id) == newest[1:2]
        with pytest.raises(UnknownMachine):
            fast.get("board", "nope")
    finally:
        reader.close()


def test_the_cli_reads_without_sqlalchemy_and_shows_the_same(engine, clock, migrated_url):
    _fleet(engine, clock)
    probe = ("import sys\nfrom corral.cli.main import main\n"
             "sys.argv = ['corral', 'board', 'show', 'r01']\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('loaded' if 'sqlalchemy' in sys.modules else 'not loaded')\n")
    env = {"CORRAL_DATABASE_URL": migrated_url, "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "not loaded"
    assert "state:     maintenance" in run.stdout
    history = subprocess.run([CORRAL, "board", "history", "r03"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert history.returncode == 0, history.stderr
    assert "failed_pinging" in history.stdout
    assert "bad ✓" in history.stdout


def test_a_missing_sqlite_database_is_reported_not_created(tmp_path):
    target = tmp_path / "nothing-here.db"
    run = subprocess.run([CORRAL, "board", "show", "x"], capture_output=True, text=True,
                         env={"CORRAL_DATABASE_URL": f"sqlite:///{target}", "PATH": "/usr/bin"},
                         timeout=60)
    assert run.returncode == 5
    assert run.stderr.strip() == ("error: database schema is at revision none, this Corral "
                                  f"needs {SCHEMA_REVISION}; run `corral db upgrade`")
    assert not target.exists()


def test_an_unmigrated_database_is_refused_by_the_reader(db_url):
    reader = open_reader(db_url)
    assert reader is not None
    try:
        with pytest.raises(SchemaNotCurrent, match="revision none"):
            reader.require_current()
    finally:
        reader.close()


@pytest.mark.parametrize("url", ["postgresql://nobody@127.0.0.1:1/x",
                                 "mysql://nobody@127.0.0.1:1/x"])
def test_an_unreachable_server_is_unavailable(url):
    reader = open_reader(url)
    assert reader is not None
    with pytest.raises(Unavailable, match="database unavailable"):
        reader.require_current()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:",
                                 "sqlite:///file:x?mode=memory&uri=true",
                                 "postgresql://h/db?sslmode=require",
                                 "mysql+mysqldb://root@h/db", "mysql://root@h",
                                 "oracle://h/db", "not a url"])
def test_urls_the_reader_leaves_to_the_store(url):
    assert open_reader(url) is None
