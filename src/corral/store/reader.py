"""Reads for commands that only look, on the bare DB-API driver.

``corral board show`` and friends read a row or a page and exit; importing
SQLAlchemy (and building its engine) would cost them more than everything
else they do together. A :class:`Reader` runs the few statements they need
straight on the driver (:mod:`sqlite3`, psycopg, PyMySQL) and returns the same
:class:`~corral.store.values.MachineRow` and
:class:`~corral.store.values.HistoryEntry` values as the store, with the same
errors. Every statement is named below; each backend gets its placeholder.

:func:`open_reader` answers None for a URL it does not take on (an in-memory
or URI-form SQLite database, a driver other than PyMySQL, connection options
in the query string): the caller then reads through the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from corral.store.driver import (
    MYSQL_SESSION,
    DriverErrors,
    classify,
    loads_json,
    normalize_url,
    require_revision,
)
from corral.store.values import HistoryEntry, MachineRow

_MACHINE_COLUMNS = ("id, kind, name, state, state_entered_at, deadline, counters, epoch, "
                    "attrs, created_at, updated_at, vars")
_HISTORY_COLUMNS = ("id, machine_id, epoch, from_state, to_state, event, source, actor, "
                    "reason, at, payload, operation_id")

# {p} is the driver's placeholder; {states} a list of them.
READ_MACHINE = f"SELECT {_MACHINE_COLUMNS} FROM machines WHERE kind = {{p}} AND name = {{p}}"
READ_MACHINES = f"SELECT {_MACHINE_COLUMNS} FROM machines WHERE kind = {{p}}"
READ_MACHINES_IN_STATES = " AND state IN ({states})"
READ_MACHINES_AFTER = " AND name > {p}"
READ_MACHINES_PAGE = " ORDER BY name LIMIT {p}"
READ_MACHINES_ALL = " ORDER BY name"
READ_HISTORY = f"SELECT {_HISTORY_COLUMNS} FROM history WHERE machine_id = {{p}}"
READ_HISTORY_BEFORE = " AND id < {p}"
READ_HISTORY_PAGE = " ORDER BY id DESC LIMIT {p}"
READ_REVISION = "SELECT version_num FROM alembic_version"

# Whether the schema has been created at all, per backend.
HAS_REVISION_TABLE = {
    "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'",
    "postgresql": "SELECT 1 WHERE to_regclass('alembic_version') IS NOT NULL",
    "mysql": ("SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
              "AND table_name = 'alembic_version'"),
}


class Reader:
    """One connection and the statements of a read-only command.

    ``connect`` opens the connection (on first use); ``errors`` are the
    driver's exception classes; ``placeholder`` its parameter marker;
    ``decodes_json``: the driver returns JSON columns decoded (psycopg's
    jsonb), not as text.
    """

    def __init__(self, backend: str, connect: Callable[[], Any], errors: DriverErrors,
                 placeholder: str, *, decodes_json: bool = False) -> None:
        self.backend = backend
        self._connect = connect
        self._errors = errors
        self._p = placeholder
        self._decodes_json = decodes_json
        self.machines = _ReaderMachines(self)
        self.history = _ReaderHistory(self)
        self._conn: Any = None

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        try:
            if self._conn is None:
                self._conn = self._connect()
            cursor = self._conn.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        except Exception as exc:
            mine = classify(exc, self._errors)
            if mine is None:
                raise
            raise mine from exc

    def _rows(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._cursor() as cursor:
            cursor.execute(statement, tuple(params))
            return list(cursor.fetchall())

    def require_current(self) -> None:
        """Raises: SchemaNotCurrent (the database is not at the revision this
        Corral needs, or has no schema yet); Unavailable."""
        current = None
        if self._rows(HAS_REVISION_TABLE[self.backend], ()):
            found = self._rows(READ_REVISION, ())
            current = found[0][0] if found else None
        require_revision(current)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def session(self) -> Iterator[Reader]:
        """The reader itself (it has the read methods of a store transaction)."""
        yield self

    def _json(self, value: Any) -> Any:
        if value is None or self._decodes_json:
            return value
        return loads_json(value)

    def _machine(self, r: tuple[Any, ...]) -> MachineRow:
        return MachineRow(id=r[0], kind=r[1], name=r[2], state=r[3],
                          state_entered_at=_utc(r[4]), deadline=_utc(r[5]),
                          counters=dict(self._json(r[6]) or {}), epoch=r[7],
                          attrs=dict(self._json(r[8]) or {}), created_at=_utc(r[9]),
                          updated_at=_utc(r[10]), vars=self._json(r[11]))

    def _history(self, r: tuple[Any, ...]) -> HistoryEntry:
        return HistoryEntry(id=r[0], machine_id=r[1], epoch=r[2], from_state=r[3],
                            to_state=r[4], event=r[5], source=r[6], actor=r[7], reason=r[8],
                            at=_utc(r[9]), payload=self._json(r[10]), operation_id=r[11])



class _ReaderMachines:
    """``reader.machines``: the machine reads of a store transaction's
    ``tx.machines``, on the bare driver."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def get(self, kind: str, name: str) -> MachineRow | None:
        rows = self.reader._rows(READ_MACHINE.format(p=self.reader._p), (kind, name))
        return self.reader._machine(rows[0]) if rows else None

    def list(self, kind: str, *, states: Sequence[str] | None = None,
                      after: str | None = None, limit: int | None = None
                      ) -> list[MachineRow]:
        """As :meth:`corral.store.machines.Machines.list`."""
        statement = READ_MACHINES.format(p=self.reader._p)
        params: list[Any] = [kind]
        if states is not None:
            if not states:
                return []
            marks = ", ".join([self.reader._p] * len(states))
            statement += READ_MACHINES_IN_STATES.format(states=marks)
            params += states
        if after is not None:
            statement += READ_MACHINES_AFTER.format(p=self.reader._p)
            params.append(after)
        if limit is not None:
            statement += READ_MACHINES_PAGE.format(p=self.reader._p)
            params.append(limit)
        else:
            statement += READ_MACHINES_ALL
        return [self.reader._machine(r) for r in self.reader._rows(statement, params)]


class _ReaderHistory:
    """``reader.history``: as a store transaction's ``tx.history.list``."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def list(self, machine_id: int, *, limit: int = 100,
                     before_id: int | None = None) -> list[HistoryEntry]:
        """As :meth:`corral.store.history.History.list`."""
        statement, params = READ_HISTORY.format(p=self.reader._p), [machine_id]
        if before_id is not None:
            statement += READ_HISTORY_BEFORE.format(p=self.reader._p)
            params.append(before_id)
        statement += READ_HISTORY_PAGE.format(p=self.reader._p)
        params.append(limit)
        return [self.reader._history(r) for r in self.reader._rows(statement, params)]


def _utc(value: Any) -> Any:
    """A stored timestamp as an aware UTC datetime: SQLite keeps naive UTC
    text, MariaDB naive UTC ``DATETIME(6)``, PostgreSQL ``timestamptz``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def open_reader(url: str) -> Reader | None:
    """A reader for ``url``, or None where the store should read instead
    (nothing is connected until the first read)."""
    url = normalize_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or "?" in rest:
        return None
    if scheme == "sqlite":
        return _sqlite(rest)
    if scheme == "postgresql+psycopg":
        return _postgres("postgresql://" + rest)
    if scheme in ("mysql+pymysql", "mariadb+pymysql"):
        return _mysql(url)
    return None


def _sqlite(rest: str) -> Reader | None:
    # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy reads them.
    path = rest[1:] if rest.startswith("/") else ""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    import sqlite3

    def connect() -> sqlite3.Connection:
        file = Path(path)  # as SQLAlchemy opens it: no ~ expansion
        if not file.exists():
            # A command that only reads must not create an empty database.
            require_revision(None)
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=rw", uri=True, timeout=60)
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    return Reader("sqlite", connect, DriverErrors(
        unavailable=(sqlite3.OperationalError, sqlite3.DatabaseError),
        schema=(sqlite3.ProgrammingError,)), "?")


def _postgres(conninfo: str) -> Reader:
    import psycopg

    def connect() -> psycopg.Connection[Any]:
        from psycopg.types.json import set_json_loads

        conn = psycopg.connect(conninfo, autocommit=True, application_name="corral")
        set_json_loads(loads_json, conn)
        return conn

    return Reader("postgresql", connect, DriverErrors(
        unavailable=(psycopg.OperationalError, psycopg.InterfaceError),
        schema=(psycopg.ProgrammingError,)), "%s", decodes_json=True)


def _mysql(url: str) -> Reader | None:
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        return None  # the store says what is wrong with it
    try:
        port = parts.port or 3306
    except ValueError:
        return None
    import pymysql

    def connect() -> Any:
        return pymysql.connect(
            host=parts.hostname or "localhost", port=port,
            user=unquote(parts.username or ""), password=unquote(parts.password or ""),
            database=database, charset="utf8mb4", init_command=MYSQL_SESSION,
            autocommit=True)

    return Reader("mysql", connect, DriverErrors(
        unavailable=(pymysql.err.OperationalError, pymysql.err.InterfaceError),
        schema=(pymysql.err.ProgrammingError,)), "%s")
