"""The MariaDB / MySQL store: SQLAlchemy Core on the PyMySQL driver.

It is :class:`~corral.store.sql.SqlStore` with what this backend does
differently:

- sessions run at ``READ COMMITTED`` (as PostgreSQL does by default), so a
  re-read after taking a lock sees what other transactions committed rather
  than the snapshot of the first read; in strict SQL mode (a value that does
  not fit is an error, never silently cut); with the session time zone UTC;
- no ``UPDATE ... RETURNING``: a lease selects its rows first (``FOR UPDATE
  SKIP LOCKED``), then changes and reads them by id;
- many machine rows (a sweep batch's) are rewritten by one ``UPDATE`` whose
  values are ``CASE id WHEN ...``, not one statement per row (PyMySQL's
  ``executemany`` batches only ``INSERT``);
- a named lock (the scheduler's, the state recount's) is ``GET_LOCK``,
  released when the transaction ends;
- history ids come from one counter row (``history_counter``), taken as the
  transaction's last write, just before its commit: InnoDB gives
  ``AUTO_INCREMENT`` ids in one order and commits in another, and offers no
  list of running transactions a reader can trust
  (``information_schema.INNODB_TRX`` is a cache that polling keeps stale).
  Holding the counter's row lock from the ids to the commit makes ids commit
  in id order, without gaps, so the committed counter is the event stream's
  horizon (:class:`MysqlStream`; what it costs writers: docs/http-api.md).

Which driver, and why: ``bench/mariadb_drivers.py`` and docs/performance.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text

from corral.errors import Unavailable
from corral.store.machines import Machines
from corral.store.operations import Operations
from corral.store.schema import history_counter, operations
from corral.store.sql import SqlStore, SqlTx, translated
from corral.store.stream import Stream
from corral.store.values import Kinds, OperationRow, StateChange, WriteSet

# How long a lock's taker waits for another process to let go (seconds).
LOCK_WAIT = 60


# The columns an event rewrites, and the most rows one statement carries.
_CHANGED = ("state", "state_entered_at", "deadline", "counters", "epoch", "updated_at")
UPDATE_CHUNK = 500


class MysqlMachines(Machines):
    """Many rows in one statement: ``UPDATE machines SET state = CASE id WHEN
    7 THEN %s ... END, ... WHERE id IN (7, ...)``.

    A single-table ``UPDATE``, on purpose: at ``READ COMMITTED`` InnoDB reads a
    row another transaction holds semi-consistently (its committed version,
    matched against the ``WHERE`` without waiting for the lock), so the
    statement waits only for the rows it changes, which its batch has locked
    already. An ``UPDATE`` joined to a derived table of the new values locks
    every row its join reads: with few rows the optimizer scans the table,
    and two batches locking disjoint boards deadlock on each other's rows."""

    def update(self, changes: Sequence[StateChange]) -> None:
        if len(changes) <= 1:
            super().update(changes)
            return
        for start in range(0, len(changes), UPDATE_CHUNK):
            self._update_by_case(changes[start:start + UPDATE_CHUNK])

    def _update_by_case(self, changes: Sequence[StateChange]) -> None:
        # Written as text with the driver's placeholders: built by SQLAlchemy,
        # six CASE expressions of 500 rows took most of a sweep batch's time
        # to construct and compile. The ids are integers, inlined.
        ids = [int(change.id) for change in changes]
        whens = " ".join(f"WHEN {i} THEN %s" for i in ids)
        assignments = ", ".join(f"{column} = CASE id {whens} END" for column in _CHANGED)
        params: list[Any] = []
        for value_of in _CHANGED_VALUES:
            params.extend(value_of(change) for change in changes)
        self.conn.exec_driver_sql(
            f"UPDATE machines SET {assignments} WHERE id IN ({', '.join(map(str, ids))})",
            tuple(params))


def _naive_utc(value: datetime | None) -> datetime | None:
    """A timestamp as the ``DATETIME(6)`` columns keep it (naive UTC)."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


# Per column of _CHANGED, in its order: the value a change binds.
_CHANGED_VALUES: tuple[Callable[[StateChange], Any], ...] = (
    lambda c: c.state,
    lambda c: _naive_utc(c.state_entered_at),
    lambda c: _naive_utc(c.deadline),
    lambda c: json.dumps(dict(c.counters), separators=(",", ":")),
    lambda c: c.epoch,
    lambda c: _naive_utc(c.updated_at),
)


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


# Takes ``n`` history ids: the new last one comes back as the statement's
# insert id, and the row stays locked until the transaction ends.
MYSQL_TAKE_HISTORY_IDS = text(
    "UPDATE history_counter SET last_id = LAST_INSERT_ID(last_id + :n) WHERE id = 1")


class MysqlStream(Stream):
    def horizon_candidate(self) -> tuple[int, Any]:
        """The committed value of the history counter. A writer takes its ids
        from the counter and holds its row lock until it commits (or rolls
        back, and the ids are taken again by the next), so the writer that
        moved the counter to N took it after every earlier id had committed;
        and InnoDB makes a commit visible before it releases the locks. No
        row at or below N can still appear: nothing to wait for."""
        newest = select(history_counter.c.last_id).where(history_counter.c.id == 1)
        return int(self.conn.execute(newest).scalar_one()), None


class MysqlTx(SqlTx):
    """One transaction on MariaDB or MySQL (see the module docstring)."""

    machines_class = MysqlMachines
    operations_class = MysqlOperations
    stream_class = MysqlStream

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        # GET_LOCK names this session holds, released when the transaction ends.
        self.held: list[str] = []
        # History rows written, waiting for their ids (:meth:`number_history`).
        self.unnumbered: list[Mapping[str, Any]] = []

    def write(self, batch: WriteSet) -> None:
        """As :meth:`SqlTx.write`, but the history rows wait for the end of
        the transaction (:meth:`number_history`)."""
        self.machines.update(batch.changes)
        self.operations.insert(batch.operations)
        self.idempotency.insert(batch.idempotency)
        self.machines.update_vars(batch.vars_changes)
        self.unnumbered.extend(batch.history)

    def number_history(self) -> None:
        """Write the transaction's history rows, their ids taken from the
        counter: the last writes before the commit, so that the counter's
        row lock is held for two round trips (the rows, the commit)."""
        if not self.unnumbered:
            return
        count = len(self.unnumbered)
        last = int(self.conn.execute(MYSQL_TAKE_HISTORY_IDS, {"n": count}).lastrowid)
        first = last - count + 1
        self.history.insert([dict(entry, id=first + n)
                             for n, entry in enumerate(self.unnumbered)])
        self.unnumbered = []

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
                    tx.number_history()
            finally:
                # GET_LOCK belongs to the session, not the transaction.
                for name in tx.held:
                    conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                if tx.held:
                    conn.commit()
