"""The store port: what Corral asks of its database.

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
- :meth:`Store.unit` is a general transaction. It hands out one repository
  per domain (``tx.machines``, ``tx.operations``, ``tx.webhooks``, ...:
  the modules of those names in ``store/`` hold their statements), for work
  that changes a service's own tables and machines in one commit.

Reads outside any explicit transaction go through :meth:`Store.unit` too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from corral.store.values import MachineState, WriteSet

if TYPE_CHECKING:
    from corral.store.bootres import Bootres
    from corral.store.consoles import Consoles
    from corral.store.controllers import Controllers
    from corral.store.health import Health
    from corral.store.history import History
    from corral.store.idempotency import Idempotency
    from corral.store.jobs import Jobs
    from corral.store.leases import Leases
    from corral.store.machines import Machines
    from corral.store.metrics import Metrics
    from corral.store.operations import Operations
    from corral.store.pools import Pools
    from corral.store.stream import Stream
    from corral.store.tokens import Tokens
    from corral.store.webhooks import Webhooks


class EventMachines(Protocol):
    """``tx.machines`` on the event path."""

    def lock(self, kind: str, name: str) -> MachineState | None:
        """Read a machine's state and lock its row until the transaction ends."""

    def lock_many(self, keys: Sequence[tuple[str, str]]) -> list[MachineState]:
        """Lock several machines, in id order (so two callers never deadlock)."""

    def claim_due(self, now: datetime, limit: int) -> list[MachineState]:
        """Lock up to ``limit`` machines whose deadline has passed, skipping rows
        another transaction holds, so each due row is claimed by one sweeper."""


class EventIdempotency(Protocol):
    def outcomes(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """Stored outcomes of earlier requests, by (scope, key)."""


class EventLeases(Protocol):
    def holds(self, boards: Sequence[str]) -> dict[str, tuple[int, int]]:
        """``{board: (lease id, epoch)}`` of the held boards among ``boards``."""


class EventTx(Protocol):
    """What firing an event needs: lock, read stored outcomes and which
    boards leases hold (a person's event on a held board is refused), write
    once."""

    @property
    def machines(self) -> EventMachines: ...

    @property
    def idempotency(self) -> EventIdempotency: ...

    @property
    def leases(self) -> EventLeases: ...

    def write(self, batch: WriteSet) -> None:
        """Write a planned change of locked machines: their new state, the
        history rows, the outbox rows, outcomes kept for replay and vars."""


class AsyncEventTx(Protocol):
    """:class:`EventTx` for asyncio callers (PostgreSQL): the same
    repositories, whose methods return awaitables."""

    machines: Any
    idempotency: Any
    leases: Any

    def write(self, batch: WriteSet) -> Awaitable[None]: ...


class Tx(Protocol):
    """A general transaction: one repository per domain, each holding its
    statements (see the modules of the same names in ``store/``)."""

    @property
    def machines(self) -> Machines: ...
    @property
    def history(self) -> History: ...
    @property
    def operations(self) -> Operations: ...
    @property
    def idempotency(self) -> Idempotency: ...
    @property
    def stream(self) -> Stream: ...
    @property
    def webhooks(self) -> Webhooks: ...
    @property
    def pools(self) -> Pools: ...
    @property
    def jobs(self) -> Jobs: ...
    @property
    def leases(self) -> Leases: ...
    @property
    def health(self) -> Health: ...
    @property
    def tokens(self) -> Tokens: ...
    @property
    def bootres(self) -> Bootres: ...
    @property
    def controllers(self) -> Controllers: ...
    @property
    def consoles(self) -> Consoles: ...
    @property
    def metrics(self) -> Metrics: ...

    def write(self, batch: WriteSet) -> None:
        """As :meth:`EventTx.write`."""

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
