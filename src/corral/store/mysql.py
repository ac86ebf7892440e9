"""The MariaDB / MySQL store: SQLAlchemy Core on the PyMySQL driver.

It is :class:`~corral.store.sql.SqlStore` with what this backend does
differently:

- sessions run at ``READ COMMITTED`` (as PostgreSQL does by default), so a
  re-read after taking a lock sees what other transactions committed rather
  than the snapshot of the first read; in strict SQL mode (a value that does
  not fit is an error, never silently cut); with the session time zone UTC;
- no ``UPDATE ... RETURNING`` and no ``LIMIT`` in an ``IN`` subquery: a
  lease and an expiry select the rows first (``FOR UPDATE SKIP LOCKED``),
  then change them by id;
- new rows' ids come from the insert's own result (``LAST_INSERT_ID``), which
  MySQL 8 and MariaDB both give;
- the scheduler lock is ``GET_LOCK``, released when the transaction ends.

Which driver, and why: ``bench/mariadb_drivers.py`` and docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, text, tuple_, update

from corral.errors import Unavailable
from corral.store.schema import (
    bootres_imports,
    idempotency_keys,
    jobs,
    machines,
    operations,
    tokens,
)
from corral.store.sql import SqlStore, SqlTx, translated
from corral.store.values import OperationRow

SCHEDULER_LOCK = "corral_scheduler"
# How long a lock's taker waits for another process to let go (seconds).
LOCK_WAIT = 60


def _new_id(result: Any) -> int:
    """The id of the row an insert just wrote."""
    key = result.inserted_primary_key
    assert key is not None
    assert key[0] is not None
    return int(key[0])


class MysqlTx(SqlTx):
    """One transaction on MariaDB or MySQL (see the module docstring)."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        # GET_LOCK names this session holds, released when the transaction ends.
        self.held: list[str] = []

    def insert_machine(self, *, kind: str, name: str, state: str, attrs: Mapping[str, Any],
                       now: datetime, deadline: datetime | None) -> int:
        result = self.conn.execute(insert(machines), {
            "kind": kind, "name": name, "state": state, "state_entered_at": now,
            "deadline": deadline, "counters": {}, "epoch": 1, "attrs": dict(attrs),
            "created_at": now, "updated_at": now, "vars": {}})
        return _new_id(result)

    def lease_operations(self, *, now: datetime, owner: str, lease_until: datetime,
                         limit: int) -> list[OperationRow]:
        claimable = (
            select(operations.c.id)
            .where(or_(and_(operations.c.status == "pending", operations.c.run_after <= now),
                       and_(operations.c.status == "running",
                            operations.c.lease_expires_at < now)))
            .order_by(operations.c.id).limit(limit).with_for_update(skip_locked=True))
        ids = [r[0] for r in self.conn.execute(claimable)]
        if not ids:
            return []
        self.conn.execute(update(operations).where(operations.c.id.in_(ids)).values(
            status="running", lease_owner=owner, lease_expires_at=lease_until,
            attempts=operations.c.attempts + 1))
        rows = self.conn.execute(select(operations).where(operations.c.id.in_(ids))
                                 .order_by(operations.c.id))
        return [OperationRow.from_row(r) for r in rows]

    def delete_idempotency_keys_before(self, cutoff: datetime, limit: int) -> int:
        keys = [tuple(r) for r in self.conn.execute(
            select(idempotency_keys.c.scope, idempotency_keys.c.key)
            .where(idempotency_keys.c.created_at < cutoff)
            .order_by(idempotency_keys.c.created_at).limit(limit)
            .with_for_update(skip_locked=True))]
        if not keys:
            return 0
        result = self.conn.execute(delete(idempotency_keys).where(
            tuple_(idempotency_keys.c.scope, idempotency_keys.c.key).in_(keys)))
        return int(result.rowcount)

    def lock_scheduler(self) -> None:
        self.lock_named(SCHEDULER_LOCK)

    def lock_named(self, name: str) -> None:
        got = self.conn.execute(text("SELECT GET_LOCK(:name, :wait)"),
                                {"name": name, "wait": LOCK_WAIT}).scalar()
        if got != 1:
            raise Unavailable(f"another process held the lock {name!r} for {LOCK_WAIT} s; "
                              "this pass is skipped")
        self.held.append(name)

    def insert_job(self, record: Mapping[str, Any]) -> str:
        result = self.conn.execute(insert(jobs), {"name": "pending", **record})
        job_id = _new_id(result)
        name = f"job-{job_id}"
        self.conn.execute(update(jobs).where(jobs.c.id == job_id).values(name=name))
        return name

    def start_bootres_import(self, *, started_at: datetime, storage: str,
                             sources: Sequence[str]) -> int:
        result = self.conn.execute(insert(bootres_imports), {
            "started_at": started_at, "status": "running", "storage": storage,
            "sources": list(sources)})
        return _new_id(result)

    def save_token(self, *, name: str, role: str, machine_id: int | None, secret_hash: str,
                   now: datetime) -> int:
        existing = self.conn.execute(select(tokens.c.id).where(tokens.c.name == name)
                                     .with_for_update()).scalar()
        values = {"role": role, "machine_id": machine_id, "secret_hash": secret_hash,
                  "created_at": now, "revoked_at": None}
        if existing is not None:
            self.conn.execute(update(tokens).where(tokens.c.id == existing).values(**values))
            return int(existing)
        result = self.conn.execute(insert(tokens), {"name": name, **values})
        return _new_id(result)


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
