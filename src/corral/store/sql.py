"""The SQLAlchemy Core store: SQLite, and the base PostgreSQL and MariaDB build on.

A :class:`SqlTx` is one transaction on one connection; it hands out the
repositories of the domains (``machines.py``, ``operations.py``, ...), where
every statement is written once. Driver and SQLAlchemy
exceptions are turned into Corral's own errors here (:func:`translated`), so
that nothing above the store needs to know which database it runs on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy import exc as sa_exc

from corral.errors import Unavailable
from corral.store.bootres import Bootres
from corral.store.consoles import Consoles
from corral.store.controllers import Controllers
from corral.store.driver import NO_DRIVER, DriverErrors, classify, first_line, require_revision
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
from corral.store.values import WriteSet
from corral.store.webhooks import Webhooks

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
    """One transaction through SQLAlchemy Core: it hands out one repository
    per domain (``tx.machines``, ``tx.webhooks``, ...), each on this
    transaction's connection, and writes a planned change (:meth:`write`).

    A dialect that does a domain differently names its own repository class
    in a subclass (see :mod:`corral.store.postgres`, :mod:`corral.store.mysql`);
    what is here is what SQLite runs.
    """

    machines_class: type[Machines] = Machines
    operations_class: type[Operations] = Operations
    stream_class: type[Stream] = Stream

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @cached_property
    def machines(self) -> Machines:
        return self.machines_class(self.conn)

    @cached_property
    def history(self) -> History:
        return History(self.conn)

    @cached_property
    def operations(self) -> Operations:
        return self.operations_class(self.conn)

    @cached_property
    def idempotency(self) -> Idempotency:
        return Idempotency(self.conn)

    @cached_property
    def stream(self) -> Stream:
        return self.stream_class(self.conn)

    @cached_property
    def webhooks(self) -> Webhooks:
        return Webhooks(self.conn)

    @cached_property
    def pools(self) -> Pools:
        return Pools(self.conn)

    @cached_property
    def jobs(self) -> Jobs:
        return Jobs(self.conn)

    @cached_property
    def leases(self) -> Leases:
        return Leases(self.conn)

    @cached_property
    def health(self) -> Health:
        return Health(self.conn)

    @cached_property
    def tokens(self) -> Tokens:
        return Tokens(self.conn)

    @cached_property
    def bootres(self) -> Bootres:
        return Bootres(self.conn)

    @cached_property
    def controllers(self) -> Controllers:
        return Controllers(self.conn)

    @cached_property
    def consoles(self) -> Consoles:
        return Consoles(self.conn)

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.conn)

    def write(self, batch: WriteSet) -> None:
        """Write a planned change of locked machines: their new state, the
        history rows, the outbox rows, outcomes kept for replay and vars."""
        self.machines.update(batch.changes)
        self.history.insert(batch.history)
        self.operations.insert(batch.operations)
        self.idempotency.insert(batch.idempotency)
        self.machines.update_vars(batch.vars_changes)

    def lock_named(self, name: str) -> None:
        """Let one transaction at a time hold ``name``, until it ends. Nothing
        to do on SQLite: writers already take turns."""

    def ping(self) -> None:
        self.conn.execute(select(1))


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
