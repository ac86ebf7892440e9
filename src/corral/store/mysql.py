"""The MariaDB / MySQL store: SQLAlchemy Core on the PyMySQL driver.

It is :class:`~corral.store.sql.SqlStore` with what this backend does
differently:

- sessions run at ``READ COMMITTED`` (as PostgreSQL does by default), so a
  re-read after taking a lock sees what other transactions committed rather
  than the snapshot of the first read; in strict SQL mode (a value that does
  not fit is an error, never silently cut); with the session time zone UTC;
- no ``UPDATE ... RETURNING``: a lease selects its rows first (``FOR UPDATE
  SKIP LOCKED``), then changes and reads them by id;
- a named lock (the scheduler's, the state recount's) is ``GET_LOCK``,
  released when the transaction ends.

Which driver, and why: ``bench/mariadb_drivers.py`` and docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import select, text

from corral.errors import Unavailable, Unsupported
from corral.store.operations import Operations
from corral.store.schema import operations
from corral.store.sql import SqlStore, SqlTx, translated
from corral.store.stream import Stream
from corral.store.values import Kinds, OperationRow

# How long a lock's taker waits for another process to let go (seconds).
LOCK_WAIT = 60


class MysqlOperations(Operations):
    """No ``UPDATE ... RETURNING``: lease the claimed rows by id, then read them."""

    def lease(self, *, now: datetime, owner: str, lease_until: datetime,
              limit: int, kinds: Kinds = None) -> list[OperationRow]:
        ids = [r[0] for r in self.conn.execute(self._claimable(now, limit, kinds))]
        if not ids:
            return []
        self.conn.execute(self._leased(ids, owner, lease_until))
        rows = self.conn.execute(select(operations).where(operations.c.id.in_(ids))
                                 .order_by(operations.c.id))
        return [OperationRow.from_row(r) for r in rows]


class MysqlStream(Stream):
    def horizon_candidate(self) -> tuple[int, Any]:
        """Not on MariaDB or MySQL: their list of running transactions
        (information_schema.INNODB_TRX) is a cache that readers polling it
        keep from being refreshed, so a horizon read from it could pass a row
        that commits later. The event stream refuses (see docs/http-api.md)."""
        raise Unsupported("the event stream needs PostgreSQL or SQLite; on MariaDB and "
                          "MySQL, follow a machine's history instead (GET "
                          "/api/v1/boards/NAME/history)")


class MysqlTx(SqlTx):
    """One transaction on MariaDB or MySQL (see the module docstring)."""

    operations_class = MysqlOperations
    stream_class = MysqlStream

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        # GET_LOCK names this session holds, released when the transaction ends.
        self.held: list[str] = []

    def lock_named(self, name: str) -> None:
        got = self.conn.execute(text("SELECT GET_LOCK(:name, :wait)"),
                                {"name": name, "wait": LOCK_WAIT}).scalar()
        if got != 1:
            raise Unavailable(f"another process held the lock {name!r} for {LOCK_WAIT} s; "
                              "this pass is skipped")
        self.held.append(name)


class MysqlStore(SqlStore):
    """MariaDB 10.6+ or MySQL 8 (``SKIP LOCKED`` needs them)."""

    # Sweep batches claim with SKIP LOCKED: several may run at once.
    concurrent_sweeps = True
    tx_class = MysqlTx

    @contextmanager
    def unit(self) -> Iterator[SqlTx]:
        with translated(self.driver_errors), self.sa.connect() as conn:
            tx = MysqlTx(conn)
            try:
                with conn.begin():
                    yield tx
            finally:
                # GET_LOCK belongs to the session, not the transaction.
                for name in tx.held:
                    conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                if tx.held:
                    conn.commit()
