"""Shared fixtures: a real database per test, SQLite, PostgreSQL or MariaDB.

PostgreSQL comes from ``CORRAL_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), MariaDB (or MySQL) from
``CORRAL_TEST_MARIADB_URL`` (default ``mysql://root@127.0.0.1:3306/``); each
test gets its own database, created with a unique name and dropped
afterwards. Without a reachable server those cases skip with the reason,
unless ``CORRAL_REQUIRE_POSTGRES=1`` / ``CORRAL_REQUIRE_MARIADB=1`` (CI),
which turn the skip into a failure.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from corral.engine.core import Engine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from corral.store.port import Store

PG_ADMIN_URL = os.environ.get("CORRAL_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("CORRAL_REQUIRE_POSTGRES") == "1"
MARIADB_ADMIN_URL = os.environ.get("CORRAL_TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/")
REQUIRE_MARIADB = os.environ.get("CORRAL_REQUIRE_MARIADB") == "1"


class ManualClock:
    """A clock tests move by hand, so deadlines come due without sleeping."""

    def __init__(self) -> None:
        self._now = datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


def _pg_reason() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(exc).strip()}"


_PG_UNAVAILABLE = _pg_reason()


def require_postgres() -> None:
    if _PG_UNAVAILABLE is None:
        return
    if REQUIRE_PG:
        pytest.fail(f"CORRAL_REQUIRE_POSTGRES=1 but {_PG_UNAVAILABLE}")
    pytest.skip(_PG_UNAVAILABLE)


def create_pg_database() -> str:
    """Create an empty database with a unique name; return its URL."""
    name = f"corral_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_pg_database() -> Iterator[str]:
    require_postgres()
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


def _mariadb_connect(database: str | None = None):  # type: ignore[no-untyped-def]
    import pymysql
    from sqlalchemy.engine import make_url

    url = make_url(MARIADB_ADMIN_URL)
    return pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                           user=url.username or "root", password=url.password or "",
                           database=database, connect_timeout=3, autocommit=True)


def _mariadb_reason() -> str | None:
    try:
        _mariadb_connect().close()
        return None
    except Exception as exc:
        return f"MariaDB not reachable at {MARIADB_ADMIN_URL}: {str(exc).strip()}"


_MARIADB_UNAVAILABLE = _mariadb_reason()


def require_mariadb() -> None:
    if _MARIADB_UNAVAILABLE is None:
        return
    if REQUIRE_MARIADB:
        pytest.fail(f"CORRAL_REQUIRE_MARIADB=1 but {_MARIADB_UNAVAILABLE}")
    pytest.skip(_MARIADB_UNAVAILABLE)


@contextmanager
def scratch_mariadb_database() -> Iterator[str]:
    """An empty MariaDB database with a unique name (its URL), dropped afterwards."""
    require_mariadb()
    name = f"corral_test_{uuid.uuid4().hex[:12]}"
    admin = _mariadb_connect()
    try:
        admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield MARIADB_ADMIN_URL.rstrip("/") + f"/{name}"
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty PostgreSQL database (not migrated)."""
    with scratch_pg_database() as url:
        yield url


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param("mariadb", marks=pytest.mark.mariadb)]


@contextmanager
def scratch_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of ``backend`` (sqlite, postgres, mariadb): its URL."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'corral.db'}"
    elif backend == "postgres":
        with scratch_pg_database() as url:
            yield url
    else:
        with scratch_mariadb_database() as url:
            yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend (not migrated)."""
    with scratch_database(request.param, tmp_path) as url:
        yield url


def _migrate(url: str) -> str:
    store = open_store(url)
    store.upgrade()
    store.dispose()
    return url


@pytest.fixture
def migrated_url(db_url: str) -> str:
    return _migrate(db_url)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def machines() -> MachineSet:
    return MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR))


@pytest.fixture
def store(migrated_url: str) -> Iterator[Store]:
    """The store of a fresh, migrated database of each backend."""
    opened = open_store(migrated_url)
    yield opened
    opened.dispose()


@pytest.fixture
def engine(store: Store, machines: MachineSet, clock: ManualClock) -> Engine:
    return Engine(store, machines, clock=clock)


@pytest.fixture
def backend(db_url: str) -> str:
    if db_url.startswith("postgresql"):
        return "postgres"
    return "mariadb" if db_url.startswith(("mysql", "mariadb")) else "sqlite"


@pytest.fixture
def pg_migrated_url(pg_url: str) -> str:
    return _migrate(pg_url)


SERVER_BACKENDS = BACKENDS[1:]


@pytest.fixture(params=SERVER_BACKENDS)
def server_migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database on each server backend (PostgreSQL,
    MariaDB): for tests of several processes taking rows with SKIP LOCKED."""
    with scratch_database(request.param, tmp_path) as url:
        yield _migrate(url)


@pytest.fixture
def server_engine(server_migrated_url: str, machines: MachineSet, clock: ManualClock
                  ) -> Iterator[Engine]:
    """An engine on :func:`server_migrated_url`."""
    store = open_store(server_migrated_url)
    yield Engine(store, machines, clock=clock)
    store.dispose()


@pytest.fixture
def pg_engine(pg_migrated_url: str, machines: MachineSet, clock: ManualClock) -> Iterator[Engine]:
    """An engine on a fresh, migrated PostgreSQL database."""
    store = open_store(pg_migrated_url)
    yield Engine(store, machines, clock=clock)
    store.dispose()
