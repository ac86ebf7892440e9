"""The store port: everything Corral asks of its database, as one protocol.

The engine and the services talk to a :class:`Store` only; each backend
(:mod:`corral.store.sql` for SQLite, :mod:`corral.store.postgres`,
:mod:`corral.store.mysql` for MariaDB and MySQL) implements it once.
Nothing outside ``store/`` sees SQL, SQLAlchemy, a driver or a driver's
exceptions: a store raises Corral's own errors,
:class:`~corral.errors.Unavailable` (the database cannot be reached),
:class:`~corral.errors.DuplicateKey` (a unique key refused a row) and
:class:`~corral.errors.SchemaProblem` (a table or column is missing).

Two kinds of transaction:

- :meth:`Store.events` is the engine's hot path: lock machines (or claim due
  ones), read stored idempotent outcomes, write a planned change. On
  PostgreSQL it is two round trips, whatever the batch.
- :meth:`Store.unit` is a general transaction: the hot-path methods plus the
  services' own tables (pool assignments, jobs, boot resource records,
  tokens, the outbox), for work that changes both in one commit.

Reads outside any explicit transaction go through :meth:`Store.unit` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

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


class EventTx(Protocol):
    """What firing an event needs: lock, read, write once."""

    def lock_machine(self, kind: str, name: str) -> MachineState | None:
        """Read a machine's state and lock its row until the transaction ends."""

    def lock_machines(self, keys: Sequence[tuple[str, str]]) -> list[MachineState]:
        """Lock several machines, in id order (so two callers never deadlock)."""

    def claim_due_machines(self, now: datetime, limit: int) -> list[MachineState]:
        """Lock up to ``limit`` machines whose deadline has passed, skipping rows
        another transaction holds, so each due row is claimed by one sweeper."""

    def idempotent_outcomes(self, keys: Sequence[tuple[str, str]]
                            ) -> dict[tuple[str, str], Any]:
        """Stored outcomes of earlier requests, by (scope, key)."""

    def write(
        self,
        changes: Sequence[StateChange],
        history: Sequence[Mapping[str, Any]],
        operations: Sequence[Mapping[str, Any]],
        idempotency: Sequence[Mapping[str, Any]] = (),
        vars_changes: Sequence[VarsChange] = (),
    ) -> None:
        """Write a planned change of locked machines: their new state, the
        history rows, the outbox rows, outcomes kept for replay and vars."""


class AsyncEventTx(Protocol):
    """:class:`EventTx` for asyncio callers (PostgreSQL)."""

    async def lock_machine(self, kind: str, name: str) -> MachineState | None: ...

    async def lock_machines(self, keys: Sequence[tuple[str, str]]
                            ) -> list[MachineState]: ...

    async def idempotent_outcomes(self, keys: Sequence[tuple[str, str]]
                                  ) -> dict[tuple[str, str], Any]: ...

    async def write(
        self,
        changes: Sequence[StateChange],
        history: Sequence[Mapping[str, Any]],
        operations: Sequence[Mapping[str, Any]],
        idempotency: Sequence[Mapping[str, Any]] = (),
        vars_changes: Sequence[VarsChange] = (),
    ) -> None: ...


class Tx(EventTx, Protocol):
    """A general transaction: machines, history, the outbox and the services'
    own tables. Every method is one named statement (or a short fixed sequence
    of them) of the backend."""

    # -- machines
    def get_machine(self, kind: str, name: str) -> MachineRow | None: ...

    def get_machine_by_id(self, machine_id: int) -> MachineRow | None: ...

    def lock_machine_by_id(self, machine_id: int) -> MachineState | None: ...

    def list_machines(self, kind: str, *, states: Sequence[str] | None = None,
                      after: str | None = None, limit: int | None = None
                      ) -> list[MachineRow]:
        """By name; with ``after`` and ``limit``, one page of a keyset scan."""

    def insert_machine(self, *, kind: str, name: str, state: str, attrs: Mapping[str, Any],
                       now: datetime, deadline: datetime | None) -> int: ...

    def update_machine_attrs(self, machine_id: int, attrs: Mapping[str, Any],
                             now: datetime) -> None: ...

    def machine_vars(self, machine_id: int) -> dict[str, Any]: ...

    def list_history(self, machine_id: int, *, limit: int = 100,
                     before_id: int | None = None) -> list[HistoryEntry]: ...

    # -- the outbox
    def lease_operations(self, *, now: datetime, owner: str, lease_until: datetime,
                         limit: int) -> list[OperationRow]: ...

    def lock_operation(self, operation_id: int) -> OperationRow | None: ...

    def finish_operation(self, operation_id: int, *, status: str, result: Any,
                         error: str | None, now: datetime) -> None: ...

    def retry_operation(self, operation_id: int, *, run_after: datetime,
                        error: str) -> None: ...

    def list_operations(self, machine_id: int, *, limit: int = 200) -> list[OperationRow]:
        """A machine's newest operations, newest first."""

    # -- webhooks
    def add_webhook(self, *, name: str, url: str, filters: Mapping[str, Any], secret: str,
                    cursor: int, now: datetime) -> None:
        """Raises: DuplicateKey when the name is taken."""

    def list_webhooks(self) -> list[dict[str, Any]]:
        """Every subscription, without its secret."""

    def remove_webhook(self, name: str) -> bool: ...

    def claim_webhooks(self, *, now: datetime, owner: str, until: datetime, limit: int
                       ) -> list[dict[str, Any]]: ...

    def finish_webhook_pass(self, webhook_id: int, *, owner: str, cursor: int, delivered: int,
                            failures: int, status: str, last_error: str | None,
                            next_attempt_at: datetime) -> bool: ...

    # -- the event stream
    def stream_history(self, *, after: int, upto: int, limit: int,
                       filters: Mapping[str, Sequence[str]]) -> list[StreamEntry]: ...

    def history_horizon_candidate(self) -> tuple[int, Any]:
        """The newest history id that may exist, and what must finish before
        every row up to it has committed (None: nothing)."""

    def history_settled(self, pending: Any) -> bool:
        """Whether what :meth:`history_horizon_candidate` named has finished."""

    # -- power controllers: command slots every engine process shares
    def controller_slot_count(self, controller: str) -> int: ...

    def add_controller_slots(self, controller: str, first: int, last: int) -> None:
        """Raises: DuplicateKey when another process added them first."""

    def take_controller_slot(self, controller: str, slot: int, *, holder: str, now: datetime,
                             until: datetime) -> bool: ...

    def free_controller_slot(self, controller: str, slot: int, holder: str) -> None: ...

    # -- idempotency keys and retention
    def delete_idempotency_keys_before(self, cutoff: datetime, limit: int) -> int: ...

    def prune_history_batch(self, cutoff: datetime, *, after_id: int, limit: int
                            ) -> tuple[int, int | None]:
        """Delete history older than ``cutoff`` among the ``limit`` rows after
        ``after_id``, keeping each machine's newest row: (deleted, the id to
        continue after, or None when done)."""

    def prune_operations_batch(self, cutoff: datetime, *, after_id: int, limit: int
                               ) -> tuple[int, int | None]:
        """Delete operations finished before ``cutoff`` among the ``limit``
        rows after ``after_id``: (deleted, the id to continue after, or None)."""

    # -- pools
    def lock_idle_pools(self, *, kind: str, state: str, attrs: Mapping[str, str],
                        limit: int) -> list[MachineState]: ...

    def pool_holder(self, pool: str) -> str | None: ...

    def assign_pool(self, pool: str, job_run_id: str, now: datetime) -> None: ...

    def unassign_pools(self, pools: Sequence[str], job_run_id: str) -> int: ...

    def list_assignments(self, *, job_run_id: str | None = None) -> list[Assignment]: ...

    # -- jobs
    def insert_job(self, record: Mapping[str, Any]) -> str: ...

    def get_job(self, name: str) -> dict[str, Any] | None: ...

    def queued_jobs(self, *, kind: str, state: str, limit: int
                    ) -> list[tuple[str, str | None]]: ...

    def finish_job(self, name: str, *, comment: str | None, now: datetime) -> None: ...

    # -- boot resources
    def start_bootres_import(self, *, started_at: datetime, storage: str,
                             sources: Sequence[str]) -> int: ...

    def end_bootres_import(self, import_id: int, *, status: str, snapshot: str | None,
                           error: str | None, now: datetime,
                           published: Sequence[Mapping[str, Any]]) -> None: ...

    def list_bootres_imports(self, limit: int) -> list[dict[str, Any]]: ...

    # -- tokens
    def get_token(self, token_id: int) -> TokenRow | None: ...

    def get_tokens(self, token_ids: Iterable[int]) -> list[TokenRow]: ...

    def list_tokens(self) -> list[TokenRow]: ...

    def save_token(self, *, name: str, role: str, machine_id: int | None, secret_hash: str,
                   now: datetime) -> int: ...

    def revoke_token(self, name: str, now: datetime) -> bool: ...

    # -- monitoring
    def count_machines_by_state(self) -> list[tuple[str, str, int]]: ...

    def operation_queue(self) -> tuple[int, datetime | None]: ...

    def refresh_state_counts(self, now: datetime) -> int:
        """Recount machines per (kind, state) into the stored aggregate."""

    def stored_state_counts(self) -> tuple[list[tuple[str, str, int]], datetime | None]:
        """The stored aggregate and when it was counted (None: never)."""

    def oldest_in_state(self) -> list[tuple[str, str, datetime]]:
        """(kind, state, when the machine longest in it entered it), now."""

    def stored_oldest_in_state(self) -> list[tuple[str, str, datetime]]:
        """The same, from the last recount."""

    def lock_named(self, name: str) -> None:
        """Let one transaction at a time hold ``name``, until it ends."""

    def ping(self) -> None: ...


class Store(Protocol):
    """One database, through one backend."""

    #: The SQLAlchemy dialect: "sqlite", "postgresql", "mysql" or "mariadb".
    backend: str
    #: The database URL with any password hidden, for logs.
    display_url: str
    #: Whether several sweep transactions may usefully run at once.
    concurrent_sweeps: bool
    #: Whether :meth:`connect_async` and :meth:`async_events` work.
    supports_async: bool
    #: Seconds an async connection may be used before it is replaced.
    recycle_seconds: float

    def events(self) -> AbstractContextManager[EventTx]:
        """One event transaction: commit on success, roll back on error."""

    def unit(self) -> AbstractContextManager[Tx]:
        """One general transaction: commit on success, roll back on error."""

    def history_listener(self) -> Any:
        """An object whose ``wait(timeout)`` returns once new history may have
        committed (or after ``timeout``), and ``close()``."""

    async def connect_async(self) -> Any:
        """A connection for :meth:`async_events` (opaque to callers)."""

    def async_events(self, conn: Any) -> AbstractAsyncContextManager[AsyncEventTx]:
        """:meth:`events` on a connection from :meth:`connect_async`. On an error
        the connection may be closed; see :meth:`usable`."""

    def usable(self, conn: Any) -> bool:
        """Whether an async connection may still be used."""

    async def close_async(self, conn: Any) -> None: ...

    def upgrade(self, revision: str = "head") -> None:
        """Create or migrate the schema."""

    def current_revision(self) -> str | None: ...

    def require_current(self) -> None:
        """Raises: SchemaNotCurrent."""

    def dispose(self) -> None:
        """Close every pooled connection."""
