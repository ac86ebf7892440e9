"""Connecting to the database: SQLite (embedded default), PostgreSQL or
MariaDB/MySQL.

Each backend gets what Corral's invariants need from it. SQLite runs in WAL
mode and every transaction is ``BEGIN IMMEDIATE``, so the transaction that
reads a machine row already holds the write lock and two events on one board
serialize instead of deadlocking. PostgreSQL uses psycopg 3 with server-side
prepared statements for the hot queries, and rows are locked explicitly with
``SELECT ... FOR UPDATE``. MariaDB and MySQL are reached through PyMySQL
(``mysql://`` or ``mariadb://``; ``mysql+mysqldb://`` picks mysqlclient where
it is installed), at ``READ COMMITTED``, in strict SQL mode, in UTC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from corral.errors import ConfigError
from corral.store.driver import MYSQL_SESSION, loads_json, normalize_url

# PostgreSQL connections older than this are replaced before their next use.
RECYCLE_SECONDS = 3600

# MariaDB closes a session idle this long inside a write transaction, which
# rolls back. A writer holds the history counter (store/mysql.py) from its
# ids to its commit, and every other writer queues behind it: one stopped
# there (SIGSTOP, a frozen VM) must not stop the lab. Its commit then fails
# and its caller is refused. Far below InnoDB's lock wait (50 s by default),
# so the queued writers outlive it; far above what any Corral transaction
# idles between two statements (invariant 5: no long transactions).
MARIADB_IDLE_WRITE_SECONDS = 10


def create_db_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine configured for Corral's transaction discipline.

    Raises:
        ConfigError: the URL is malformed or names an unsupported backend.
    """
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database_url {url!r} is not a database URL "
                          "(e.g. sqlite:///./var/corral.db or postgresql://host/db)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, parsed.database)
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise ConfigError("PostgreSQL is used through psycopg 3: write postgresql://...")
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            # No pre-ping: it costs a round trip per event. A connection that
            # breaks is invalidated when its transaction fails instead.
            pool_pre_ping=False,
            pool_recycle=RECYCLE_SECONDS,
            connect_args={"prepare_threshold": 1, "application_name": "corral"},
            json_deserializer=loads_json,
        )
    if backend in ("mysql", "mariadb"):
        if not parsed.database:
            raise ConfigError(f"database_url {parsed.render_as_string(hide_password=True)!r} "
                              "names no database (mysql://user@host/DATABASE)")
        return _mysql_engine(url, pool_size)
    raise ConfigError(f"unsupported database {backend!r}; use sqlite, postgresql or mysql "
                      "(MariaDB)")


def _mysql_engine(url: str, pool_size: int) -> Engine:
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=RECYCLE_SECONDS,
        isolation_level="READ COMMITTED",
        connect_args={"charset": "utf8mb4", "init_command": MYSQL_SESSION},
        json_deserializer=loads_json,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # MySQL has no such limit: there a stopped writer holds the others
        # up until it resumes or their lock wait ends (docs/http-api.md).
        if "mariadb" in str(dbapi_conn.get_server_info()).lower():
            with dbapi_conn.cursor() as cursor:
                cursor.execute("SET SESSION idle_write_transaction_timeout = "
                               f"{MARIADB_IDLE_WRITE_SECONDS}")

    return engine


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                           json_deserializer=loads_json)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, start transactions.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
