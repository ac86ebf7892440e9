"""The SQLAlchemy Core store: SQLite, and the base PostgreSQL and MariaDB build on.

Every statement is a named function of :mod:`corral.store.queries`; a
:class:`SqlTx` is one transaction on one connection. Driver and SQLAlchemy
exceptions are turned into Corral's own errors here (:func:`translated`), so
that nothing above the store needs to know which database it runs on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy import exc as sa_exc

from corral.errors import Unavailable
from corral.store import queries as q
from corral.store.driver import NO_DRIVER, DriverErrors, classify, first_line, require_revision
from corral.store.values import (
    Assignment,
    HistoryEntry,
    MachineRow,
    MachineState,
    OperationRow,
    StateChange,
    StreamEntry,
    TokenRow,
    VarsChange,
)

# SQLAlchemy's wrappers of every driver's exceptions.
SQLALCHEMY_ERRORS = DriverErrors(
    unavailable=(sa_exc.OperationalError, sa_exc.InterfaceError),
    duplicate=(sa_exc.IntegrityError,),
    schema=(sa_exc.ProgrammingError,),
)


def translate(exc: BaseException, driver: DriverErrors = NO_DRIVER) -> BaseException | None:
    """Corral's error for a database exception (None: not one)."""
    mine = classify(exc, SQLALCHEMY_ERRORS + driver)
    if mine is None and isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return Unavailable(f"database unavailable: {first_line(exc)}")
    return mine


@contextmanager
def translated(driver: DriverErrors = NO_DRIVER) -> Iterator[None]:
    """Re-raise database exceptions as Corral's errors (others pass through)."""
    try:
        yield
    except Exception as exc:
        mine = translate(exc, driver)
        if mine is None:
            raise
        raise mine from exc


@asynccontextmanager
async def translated_async(driver: DriverErrors = NO_DRIVER) -> AsyncIterator[None]:
    try:
        yield
    except Exception as exc:
        mine = translate(exc, driver)
        if mine is None:
            raise
        raise mine from exc


class _Sleeper:
    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def close(self) -> None:
        pass


class SqlTx:
    """One transaction through SQLAlchemy Core (see :class:`~corral.store.port.Tx`)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- the event path
    def lock_machine(self, kind: str, name: str) -> MachineState | None:
        return q.lock_machine(self.conn, kind, name)

    def lock_machines(self, keys: Sequence[tuple[str, str]]) -> list[MachineState]:
        return q.lock_machines(self.conn, keys)

    def claim_due_machines(self, now: datetime, limit: int) -> list[MachineState]:
        return q.claim_due_machines(self.conn, now, limit)

    def idempotent_outcomes(self, keys: Sequence[tuple[str, str]]
                            ) -> dict[tuple[str, str], Any]:
        return q.get_idempotent_outcomes(self.conn, keys)

    def write(
        self,
        changes: Sequence[StateChange],
        history: Sequence[Mapping[str, Any]],
        operations: Sequence[Mapping[str, Any]],
        idempotency: Sequence[Mapping[str, Any]] = (),
        vars_changes: Sequence[VarsChange] = (),
    ) -> None:
        q.update_machines(self.conn, changes)
        q.insert_history(self.conn, history)
        q.insert_operations(self.conn, operations)
        q.insert_idempotent_outcomes(self.conn, idempotency)
        q.update_vars(self.conn, vars_changes)

    # -- machines
    def get_machine(self, kind: str, name: str) -> MachineRow | None:
        return q.get_machine(self.conn, kind, name)

    def get_machine_by_id(self, machine_id: int) -> MachineRow | None:
        return q.get_machine_by_id(self.conn, machine_id)

    def lock_machine_by_id(self, machine_id: int) -> MachineState | None:
        return q.lock_machine_by_id(self.conn, machine_id)

    def list_machines(self, kind: str, *, states: Sequence[str] | None = None,
                      after: str | None = None, limit: int | None = None
                      ) -> list[MachineRow]:
        return q.list_machines(self.conn, kind, states=states, after=after, limit=limit)

    def insert_machine(self, *, kind: str, name: str, state: str, attrs: Mapping[str, Any],
                       now: datetime, deadline: datetime | None) -> int:
        return q.insert_machine(self.conn, kind=kind, name=name, state=state, attrs=attrs,
                                now=now, deadline=deadline)

    def update_machine_attrs(self, machine_id: int, attrs: Mapping[str, Any],
                             now: datetime) -> None:
        q.update_machine_attrs(self.conn, machine_id, attrs, now)

    def machine_vars(self, machine_id: int) -> dict[str, Any]:
        return q.machine_vars(self.conn, machine_id)

    def list_history(self, machine_id: int, *, limit: int = 100,
                     before_id: int | None = None) -> list[HistoryEntry]:
        return q.list_history(self.conn, machine_id, limit=limit, before_id=before_id)

    # -- the outbox
    def lease_operations(self, *, now: datetime, owner: str, lease_until: datetime,
                         limit: int) -> list[OperationRow]:
        return q.lease_operations(self.conn, now=now, owner=owner, lease_until=lease_until,
                                  limit=limit)

    def lock_operation(self, operation_id: int) -> OperationRow | None:
        return q.lock_operation(self.conn, operation_id)

    def finish_operation(self, operation_id: int, *, status: str, result: Any,
                         error: str | None, now: datetime) -> None:
        q.finish_operation(self.conn, operation_id, status=status, result=result, error=error,
                           now=now)

    def retry_operation(self, operation_id: int, *, run_after: datetime, error: str) -> None:
        q.retry_operation(self.conn, operation_id, run_after=run_after, error=error)

    def list_operations(self, machine_id: int, *, limit: int = 200) -> list[OperationRow]:
        return q.list_operations(self.conn, machine_id, limit=limit)

    # -- webhooks
    def add_webhook(self, *, name: str, url: str, filters: Mapping[str, Any], secret: str,
                    cursor: int, now: datetime) -> None:
        q.add_webhook(self.conn, name=name, url=url, filters=filters, secret=secret,
                      cursor=cursor, now=now)

    def list_webhooks(self) -> list[dict[str, Any]]:
        return q.list_webhooks(self.conn)

    def remove_webhook(self, name: str) -> bool:
        return q.remove_webhook(self.conn, name)

    def claim_webhooks(self, *, now: datetime, owner: str, until: datetime, limit: int
                       ) -> list[dict[str, Any]]:
        return q.claim_webhooks(self.conn, now=now, owner=owner, until=until, limit=limit)

    def finish_webhook_pass(self, webhook_id: int, *, owner: str, cursor: int, delivered: int,
                            failures: int, status: str, last_error: str | None,
                            next_attempt_at: datetime) -> bool:
        return q.finish_webhook_pass(self.conn, webhook_id, owner=owner, cursor=cursor,
                                     delivered=delivered, failures=failures, status=status,
                                     last_error=last_error, next_attempt_at=next_attempt_at)

    # -- the event stream
    def stream_history(self, *, after: int, upto: int, limit: int,
                       filters: Mapping[str, Sequence[str]]) -> list[StreamEntry]:
        return q.stream_history(self.conn, after=after, upto=upto, limit=limit,
                                filters=filters)

    def history_horizon_candidate(self) -> tuple[int, Any]:
        """The newest history id that may exist and what must end before every
        row up to it is committed: SQLite has one writer at a time and ids
        are given in its transaction, so every visible id is settled."""
        return q.newest_history_id(self.conn), None

    def history_settled(self, pending: Any) -> bool:
        return True

    # -- power controllers
    def controller_slot_count(self, controller: str) -> int:
        return q.controller_slot_count(self.conn, controller)

    def add_controller_slots(self, controller: str, first: int, last: int) -> None:
        q.add_controller_slots(self.conn, controller, first, last)

    def take_controller_slot(self, controller: str, slot: int, *, holder: str, now: datetime,
                             until: datetime) -> bool:
        return q.take_controller_slot(self.conn, controller, slot, holder=holder, now=now,
                                      until=until)

    def free_controller_slot(self, controller: str, slot: int, holder: str) -> None:
        q.free_controller_slot(self.conn, controller, slot, holder)

    # -- idempotency keys
    def delete_idempotency_keys_before(self, cutoff: datetime, limit: int) -> int:
        return q.delete_idempotency_keys_before(self.conn, cutoff, limit)

    def prune_history_batch(self, cutoff: datetime, *, after_id: int, limit: int
                            ) -> tuple[int, int | None]:
        return q.prune_history_batch(self.conn, cutoff, after_id=after_id, limit=limit)

    def prune_operations_batch(self, cutoff: datetime, *, after_id: int, limit: int
                               ) -> tuple[int, int | None]:
        return q.prune_operations_batch(self.conn, cutoff, after_id=after_id, limit=limit)

    # -- pools
    def lock_idle_pools(self, *, kind: str, state: str, attrs: Mapping[str, str],
                        limit: int) -> list[MachineState]:
        return q.lock_idle_pools(self.conn, kind=kind, state=state, attrs=attrs, limit=limit)

    def pool_holder(self, pool: str) -> str | None:
        return q.pool_holder(self.conn, pool)

    def assign_pool(self, pool: str, job_run_id: str, now: datetime) -> None:
        q.assign_pool(self.conn, pool, job_run_id, now)

    def unassign_pools(self, pools: Sequence[str], job_run_id: str) -> int:
        return q.unassign_pools(self.conn, pools, job_run_id)

    def list_assignments(self, *, job_run_id: str | None = None) -> list[Assignment]:
        return q.list_assignments(self.conn, job_run_id=job_run_id)

    # -- jobs

    def insert_job(self, record: Mapping[str, Any]) -> str:
        return q.insert_job(self.conn, record)

    def get_job(self, name: str) -> dict[str, Any] | None:
        return q.get_job(self.conn, name)

    def queued_jobs(self, *, kind: str, state: str, limit: int
                    ) -> list[tuple[str, str | None]]:
        return q.queued_jobs(self.conn, kind=kind, state=state, limit=limit)

    def finish_job(self, name: str, *, comment: str | None, now: datetime) -> None:
        q.finish_job(self.conn, name, comment=comment, now=now)

    # -- boot resources
    def start_bootres_import(self, *, started_at: datetime, storage: str,
                             sources: Sequence[str]) -> int:
        return q.start_bootres_import(self.conn, started_at=started_at, storage=storage,
                                      sources=sources)

    def end_bootres_import(self, import_id: int, *, status: str, snapshot: str | None,
                           error: str | None, now: datetime,
                           published: Sequence[Mapping[str, Any]]) -> None:
        q.end_bootres_import(self.conn, import_id, status=status, snapshot=snapshot,
                             error=error, now=now, published=published)

    def list_bootres_imports(self, limit: int) -> list[dict[str, Any]]:
        return q.list_bootres_imports(self.conn, limit)

    # -- tokens
    def get_token(self, token_id: int) -> TokenRow | None:
        return q.get_token(self.conn, token_id)

    def get_tokens(self, token_ids: Iterable[int]) -> list[TokenRow]:
        return q.get_tokens(self.conn, token_ids)

    def list_tokens(self) -> list[TokenRow]:
        return q.list_tokens(self.conn)

    def save_token(self, *, name: str, role: str, machine_id: int | None, secret_hash: str,
                   now: datetime) -> int:
        return q.save_token(self.conn, name=name, role=role, machine_id=machine_id,
                            secret_hash=secret_hash, now=now)

    def revoke_token(self, name: str, now: datetime) -> bool:
        return q.revoke_token(self.conn, name, now)

    # -- monitoring
    def count_machines_by_state(self) -> list[tuple[str, str, int]]:
        return q.count_machines_by_state(self.conn)

    def operation_queue(self) -> tuple[int, datetime | None]:
        return q.operation_queue(self.conn)

    def refresh_state_counts(self, now: datetime) -> int:
        return q.refresh_state_counts(self.conn, now)

    def stored_state_counts(self) -> tuple[list[tuple[str, str, int]], datetime | None]:
        return q.stored_state_counts(self.conn)

    def oldest_in_state(self) -> list[tuple[str, str, datetime]]:
        return q.oldest_in_state(self.conn)

    def stored_oldest_in_state(self) -> list[tuple[str, str, datetime]]:
        return q.stored_oldest_in_state(self.conn)

    def lock_named(self, name: str) -> None:
        """Nothing to do on SQLite: writers already take turns."""

    def ping(self) -> None:
        q.ping(self.conn)


class SqlStore:
    """A store on a SQLAlchemy engine (SQLite in practice; see
    :class:`corral.store.postgres.PgStore` for PostgreSQL)."""

    concurrent_sweeps = False
    supports_async = False
    recycle_seconds = float("inf")
    tx_class: type[SqlTx] = SqlTx
    driver_errors = NO_DRIVER

    def __init__(self, sa: Engine) -> None:
        #: The SQLAlchemy engine. Only ``store/``, migrations and tests use it.
        self.sa = sa
        self.backend = sa.dialect.name
        self.display_url = sa.url.render_as_string(hide_password=True)

    @contextmanager
    def unit(self) -> Iterator[SqlTx]:
        with translated(self.driver_errors), self.sa.begin() as conn:
            yield self.tx_class(conn)

    def events(self) -> Any:
        return self.unit()

    def history_listener(self) -> Any:
        """Something whose ``wait(timeout)`` returns when new history may have
        committed, and ``close()``: here, a timer (readers poll); PostgreSQL
        listens for the writers' notifications."""
        return _Sleeper()

    async def connect_async(self) -> Any:
        raise NotImplementedError(f"{self.backend} has no asyncio event path")

    def async_events(self, conn: Any) -> Any:
        raise NotImplementedError(f"{self.backend} has no asyncio event path")

    def usable(self, conn: Any) -> bool:
        return False

    async def close_async(self, conn: Any) -> None:
        return None

    def upgrade(self, revision: str = "head") -> None:
        from corral.store import migrate  # alembic: only for schema commands

        with translated(self.driver_errors):
            migrate.upgrade(self.sa, revision)

    def current_revision(self) -> str | None:
        from corral.store import migrate

        with translated(self.driver_errors):
            return migrate.current_revision(self.sa)

    def require_current(self) -> None:
        """Raises: SchemaNotCurrent (the database is not at :data:`SCHEMA_REVISION`)."""
        with translated(self.driver_errors), self.sa.connect() as conn:
            current = None
            if inspect(conn).has_table("alembic_version"):
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        require_revision(current)

    def dispose(self) -> None:
        self.sa.dispose()
