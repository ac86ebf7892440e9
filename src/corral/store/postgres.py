"""The PostgreSQL store: psycopg 3, with one writer for every event.

Every event, from any caller (the HTTP callbacks, the sweep, operation
results, a service's transaction, machine creation), is written by
:func:`_write_statements`: one statement whatever the batch (``UPDATE`` with
the history, outbox and idempotency ``INSERT``s as CTEs, each table's rows
expanded server-side from one JSON document), then any vars changes.

The event path (:meth:`PgStore.events`) is two network round trips and two
prepared statements: in psycopg's pipeline mode the locking ``SELECT ... FOR
UPDATE [SKIP LOCKED]`` is read back with a Flush, then the write is queued
and the closing Sync commits the implicit transaction. The asyncio path
(:meth:`PgStore.async_events`) runs the same steps, awaited: each step of
the event path is written once, as a generator of statements, and a sync or
an asyncio runner executes it. A general
transaction (:meth:`PgStore.unit`) is SQLAlchemy Core for the services'
tables, and the same writer, on the same connection, for events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from functools import cached_property
from typing import Any

import psycopg
from sqlalchemy import text

from corral.store.db import RECYCLE_SECONDS
from corral.store.driver import DriverErrors, loads_json
from corral.store.notifier import HistoryNotifier
from corral.store.sql import SqlStore, SqlTx, translated, translated_async
from corral.store.stream import Stream
from corral.store.values import MachineState, WriteSet

PSYCOPG_ERRORS = DriverErrors(
    unavailable=(psycopg.OperationalError, psycopg.InterfaceError),
    duplicate=(psycopg.IntegrityError,),
    schema=(psycopg.ProgrammingError,),
)

_STATE_COLUMNS = "id, kind, name, state, state_entered_at, deadline, counters, epoch"

PG_LOCK_MACHINE = f"""
SELECT {_STATE_COLUMNS} FROM machines WHERE kind = %s AND name = %s FOR UPDATE
"""

# Several machines, locked in id order so that two batches never deadlock.
# Keys come as two arrays: the planner then looks each one up in the unique
# index. (It estimates a JSON recordset at 100 rows, and for a small, often
# updated table picks a scan of every row version instead.)
PG_LOCK_MACHINES = f"""
SELECT {_STATE_COLUMNS} FROM machines
WHERE (kind, name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY id FOR UPDATE
"""

PG_IDEMPOTENT_OUTCOMES = """
SELECT scope, key, outcome FROM idempotency_keys
WHERE (scope, key) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
"""

# The held boards among some (a person's event on one is refused).
PG_BOARD_HOLDS = """
SELECT board, lease_id, epoch FROM board_holds
WHERE lease_id IS NOT NULL AND board = ANY(%s::text[])
"""

PG_CLAIM_DUE_MACHINES = f"""
SELECT {_STATE_COLUMNS} FROM machines
WHERE deadline <= %s ORDER BY deadline LIMIT %s FOR UPDATE SKIP LOCKED
"""

# Outcomes kept for idempotent replay (usually none).
_REMEMBER = """, remembered AS (
    INSERT INTO idempotency_keys (scope, key, machine_id, outcome, created_at)
    SELECT scope, key, machine_id, outcome, created_at
    FROM jsonb_to_recordset(%(idempotency)s::jsonb)
         AS i(scope text, key text, machine_id bigint, outcome jsonb, created_at timestamptz)
    ON CONFLICT DO NOTHING
    RETURNING 1
)"""

# The outbox rows of a write, expanded from one JSON document.
_INSERT_OPERATIONS = """
INSERT INTO operations (machine_id, machine_epoch, kind, target, payload, status, attempts,
                        run_after, created_at)
SELECT machine_id, machine_epoch, kind, target, payload, 'pending', 0, created_at, created_at
FROM jsonb_to_recordset(%(operations)s::jsonb)
     AS o(machine_id bigint, machine_epoch bigint, kind text, target text, payload jsonb,
          created_at timestamptz)
"""

# Each batch travels as three JSON documents expanded server-side: one
# parameter each, whatever the batch size, and cheap to serialize in Python.
PG_WRITE = """
WITH changed AS (
    UPDATE machines AS m
    SET state = c.state, state_entered_at = c.entered, deadline = c.deadline,
        counters = c.counters, epoch = c.epoch, updated_at = c.updated
    FROM jsonb_to_recordset(%(changes)s::jsonb)
         AS c(id bigint, state text, entered timestamptz, deadline timestamptz,
              counters jsonb, epoch bigint, updated timestamptz)
    -- The id array lets the planner find the rows through the primary key.
    WHERE m.id = c.id AND m.id = ANY(%(ids)s::bigint[])
    RETURNING m.id
), logged AS (
    INSERT INTO history (machine_id, epoch, from_state, to_state, event, source, actor,
                         reason, at, payload, operation_id)
    SELECT machine_id, epoch, from_state, to_state, event, source, actor, reason, at, payload,
           operation_id
    FROM jsonb_to_recordset(%(history)s::jsonb)
         AS h(machine_id bigint, epoch bigint, from_state text, to_state text, event text,
              source text, actor text, reason text, at timestamptz, payload jsonb,
              operation_id bigint)
    RETURNING id
)""" + _REMEMBER + _INSERT_OPERATIONS


# One event: scalar parameters, so the machine row is found through its
# primary key (a join against a recordset plans as a scan of every machine).
PG_WRITE_ONE = """
WITH changed AS (
    UPDATE machines
    SET state = %(state)s, state_entered_at = %(entered)s, deadline = %(deadline)s,
        counters = %(counters)s::jsonb, epoch = %(epoch)s, updated_at = %(updated)s
    WHERE id = %(id)s
    RETURNING id
), logged AS (
    INSERT INTO history (machine_id, epoch, from_state, to_state, event, source, actor,
                         reason, at, payload, operation_id)
    VALUES (%(id)s, %(epoch)s, %(from_state)s, %(to_state)s, %(event)s, %(source)s,
            %(actor)s, %(reason)s, %(at)s, %(payload)s::jsonb, %(operation_id)s)
    RETURNING id
)""" + _REMEMBER + _INSERT_OPERATIONS


# A transition's vars (rare: a pool's override, say), after the main write.
PG_UPDATE_VARS = """
UPDATE machines
SET vars = CASE WHEN %(replace)s THEN %(values)s::jsonb ELSE vars || %(values)s::jsonb END
WHERE id = %(id)s
"""


PG_LOCK_NAMED = "SELECT pg_advisory_xact_lock(hashtext(:name))"

# Wakes the event stream's readers (LISTEN corral_history) once writes have
# committed: sent by the process's notifier after the commit, never inside
# a writer's transaction (corral.store.notifier says why).
HISTORY_CHANNEL = "corral_history"

# The event stream's horizon, in two statements (see PgTx.history_horizon_candidate).
PG_LAST_HISTORY_ID = """
SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM history_id_seq
"""
# The transactions that may hold history ids: those holding a lock on the
# history table (an INSERT takes it before it takes an id, and keeps it to
# the end) and a transaction id. A snapshot's in-progress list would leave out
# those above its xmax, and pg_xact_status says committed a moment before new
# snapshots see it; a backend's xid is cleared exactly when they do. Other
# sessions (an idle psql holding an xid, say) do not hold the stream up.
PG_WRITERS = """
SELECT DISTINCT a.backend_xid::text
FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = 'history'::regclass AND l.granted
  AND a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
"""


def _row(values: tuple[Any, ...]) -> MachineState:
    id_, kind, name, state, entered, deadline, counters, epoch = values
    return MachineState(id=id_, kind=kind, name=name, state=state, state_entered_at=entered,
                        deadline=deadline, counters=counters or {}, epoch=epoch)


def _key_arrays(keys: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    return [a for a, _ in keys], [b for _, b in keys]


def _write_statements(batch: WriteSet) -> list[tuple[str, Mapping[str, Any]]]:
    """The statements of one write: the main one (every table a batch touches,
    expanded from JSON documents; scalar parameters for a single event, so its
    row is found through the primary key), then any vars changes."""
    changes, history = batch.changes, batch.history
    # A batch shares a handful of timestamps (its "now" and a deadline per
    # timeout length): format each once instead of once per row.
    iso = _IsoFormatter()
    remembered = _dumps([dict(i) | {"created_at": iso(i["created_at"])}
                         for i in batch.idempotency])
    ops = _dumps([dict(o) | {"created_at": iso(o["created_at"])} for o in batch.operations])
    statements: list[tuple[str, Mapping[str, Any]]]
    if len(changes) == 1 and len(history) == 1:
        [c], [h] = changes, history
        assert h["machine_id"] == c.id
        statements = [(PG_WRITE_ONE, {
            "id": c.id, "state": c.state, "entered": c.state_entered_at,
            "deadline": c.deadline, "counters": _dumps(c.counters), "epoch": c.epoch,
            "updated": c.updated_at, "from_state": h["from_state"],
            "to_state": h["to_state"], "event": h["event"], "source": h["source"],
            "actor": h["actor"], "reason": h["reason"], "at": h["at"],
            "payload": None if h["payload"] is None else _dumps(h["payload"]),
            "operation_id": h["operation_id"], "operations": ops,
            "idempotency": remembered,
        })]
    else:
        statements = [(PG_WRITE, {
            "changes": _dumps([
                {"id": c.id, "state": c.state, "entered": iso(c.state_entered_at),
                 "deadline": iso(c.deadline), "counters": c.counters, "epoch": c.epoch,
                 "updated": iso(c.updated_at)}
                for c in changes
            ]),
            "ids": [c.id for c in changes],
            "history": _dumps([dict(h) | {"at": iso(h["at"])} for h in history]),
            "operations": ops,
            "idempotency": remembered,
        })]
    statements += [(PG_UPDATE_VARS, {"id": change.id, "replace": change.replace,
                                     "values": _dumps(change.values)})
                   for change in batch.vars_changes]
    return statements


# -- the event path, written once for both calling conventions.
#
# Each step is a generator that yields (statement, parameters, whether to
# fetch the rows) and is sent the rows back; a runner executes the
# statements, on a psycopg cursor (:func:`_run`) or an asyncio one
# (:func:`_run_async`). The same classes serve both: with the async runner
# their methods return coroutines.

Step = Generator[tuple[str, Any, bool], Any, Any]


def _run(cursor: Any, steps: Step) -> Any:
    try:
        statement, params, fetch = next(steps)
        while True:
            cursor.execute(statement, params)
            statement, params, fetch = steps.send(cursor.fetchall() if fetch else None)
    except StopIteration as done:
        return done.value


async def _run_async(cursor: Any, steps: Step) -> Any:
    try:
        statement, params, fetch = next(steps)
        while True:
            await cursor.execute(statement, params)
            rows = await cursor.fetchall() if fetch else None
            statement, params, fetch = steps.send(rows)
    except StopIteration as done:
        return done.value


def _lock_one(kind: str, name: str) -> Step:
    rows = yield PG_LOCK_MACHINE, (kind, name), True
    return _row(rows[0]) if rows else None


def _lock_many(keys: Sequence[tuple[str, str]]) -> Step:
    rows = yield PG_LOCK_MACHINES, _key_arrays(keys), True
    return [_row(v) for v in rows]


def _claim_due(now: datetime, limit: int) -> Step:
    rows = yield PG_CLAIM_DUE_MACHINES, (now, limit), True
    return [_row(v) for v in rows]


def _outcomes(keys: Sequence[tuple[str, str]]) -> Step:
    rows = yield PG_IDEMPOTENT_OUTCOMES, _key_arrays(keys), True
    return {(scope, key): outcome for scope, key, outcome in rows}


def _holds(boards: Sequence[str]) -> Step:
    rows = yield PG_BOARD_HOLDS, (list(boards),), True
    return {board: (lease_id, epoch) for board, lease_id, epoch in rows}


def _write(batch: WriteSet) -> Step:
    if batch:
        for statement, params in _write_statements(batch):
            yield statement, params, False


class _EventMachines:
    """``tx.machines`` on the event path: lock and claim."""

    def __init__(self, run: Callable[[Step], Any]) -> None:
        self._run = run

    def lock(self, kind: str, name: str) -> Any:
        return self._run(_lock_one(kind, name))

    def lock_many(self, keys: Sequence[tuple[str, str]]) -> Any:
        return self._run(_lock_many(keys))

    def claim_due(self, now: datetime, limit: int) -> Any:
        return self._run(_claim_due(now, limit))


class _EventIdempotency:
    """``tx.idempotency`` on the event path: stored outcomes."""

    def __init__(self, run: Callable[[Step], Any]) -> None:
        self._run = run

    def outcomes(self, keys: Sequence[tuple[str, str]]) -> Any:
        return self._run(_outcomes(keys))


class _EventLeases:
    """``tx.leases`` on the event path: which boards are held."""

    def __init__(self, run: Callable[[Step], Any]) -> None:
        self._run = run

    def holds(self, boards: Sequence[str]) -> Any:
        return self._run(_holds(boards))


class PgEventTx:
    """The event path on a psycopg connection in pipeline mode, sync or
    asyncio by the runner it is given (see :class:`~corral.store.port.EventTx`)."""

    def __init__(self, cursor: Any, run: Callable[[Any, Step], Any] = _run) -> None:
        self.wrote = False
        self.wrote_history = False

        def runner(steps: Step) -> Any:
            return run(cursor, steps)

        self._run = runner
        self.machines = _EventMachines(runner)
        self.idempotency = _EventIdempotency(runner)
        self.leases = _EventLeases(runner)

    def write(self, batch: WriteSet) -> Any:
        if batch:
            self.wrote = True
            self.wrote_history |= bool(batch.history)
        return self._run(_write(batch))


class PgStream(Stream):
    """The stream's horizon on PostgreSQL."""

    def horizon_candidate(self) -> tuple[int, Any]:
        """Concurrent writers take history ids in one order and commit in
        another, so a reader that is past id N could miss a row N-1 that
        commits later. The stream therefore reads only up to a horizon every
        row below which has settled: first the newest id handed out (the
        sequence, which is not transactional), then, in a later statement,
        the transactions in progress. Every writer holds a transaction id
        before it takes a history id (it has locked the machine's row), so any
        transaction that may hold an id up to the horizon is in that list;
        one that starts later takes a higher id. The horizon settles when
        none of them is still in progress for a new snapshot
        (:meth:`settled`)."""
        newest = int(self.conn.execute(text(PG_LAST_HISTORY_ID)).scalar_one())
        listed = self.conn.execute(text(PG_WRITERS)).scalars().all()
        return newest, [str(x) for x in listed]

    def settled(self, pending: Any) -> bool:
        if not pending:
            return True
        running = {str(x) for x in self.conn.execute(text(PG_WRITERS)).scalars()}
        return not running & set(pending)


class PgTx(SqlTx):
    """A general transaction on PostgreSQL: SQLAlchemy Core for the services'
    tables, the event writer for events (on the same connection)."""

    stream_class = PgStream
    wrote_history = False

    def write(self, batch: WriteSet) -> None:
        if not batch:
            return
        self.wrote_history |= bool(batch.history)
        driver = self.conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            _run(cursor, _write(batch))

    def lock_named(self, name: str) -> None:
        self.conn.execute(text(PG_LOCK_NAMED), {"name": name})

class _PgListener:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def wait(self, timeout: float) -> None:
        """Until a writer's NOTIFY arrives or ``timeout`` seconds pass."""
        with translated(PSYCOPG_ERRORS):
            for _ in self.conn.notifies(timeout=timeout, stop_after=1):
                pass

    def close(self) -> None:
        self.conn.close()


class _IsoFormatter(dict[datetime, str]):
    def __call__(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        try:
            return self[value]
        except KeyError:
            text = self[value] = value.isoformat()
            return text


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_default, separators=(",", ":"))



class PgStore(SqlStore):
    """PostgreSQL through psycopg 3 (see the module docstring)."""

    concurrent_sweeps = True
    supports_async = True
    tx_class = PgTx
    driver_errors = PSYCOPG_ERRORS
    #: Seconds an asyncio connection may live (as the pool's recycle).
    recycle_seconds = float(RECYCLE_SECONDS)

    @cached_property
    def notifier(self) -> HistoryNotifier:
        """Sends the stream's NOTIFY after commits (corral.store.notifier)."""
        def connect() -> psycopg.Connection[Any]:
            return psycopg.connect(self._libpq_url(), autocommit=True,
                                   application_name="corral-notify")
        return HistoryNotifier(connect, HISTORY_CHANNEL)

    def _libpq_url(self) -> str:
        return self.sa.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @contextmanager
    def unit(self) -> Iterator[SqlTx]:
        with super().unit() as tx:
            yield tx
        if getattr(tx, "wrote_history", False):
            self.notifier.poke()

    def dispose(self) -> None:
        if "notifier" in self.__dict__:
            self.notifier.close()
        super().dispose()

    @contextmanager
    def events(self) -> Iterator[PgEventTx]:
        """One event transaction: commit on success, roll back on error."""
        with translated(PSYCOPG_ERRORS):
            fairy = self.sa.raw_connection()
            pg = fairy.driver_connection
            assert pg is not None
            # No BEGIN or COMMIT statements: in the extended query protocol
            # everything up to a Sync is one implicit transaction. Reading the
            # locked row needs only a Flush, so the lock is held until the
            # pipeline's closing Sync, which commits the writes. Two round
            # trips, two statements.
            pg.autocommit = True
            try:
                with pg.pipeline():
                    tx = PgEventTx(pg.cursor())
                    try:
                        yield tx
                    except BaseException:
                        if tx.wrote:
                            # Writes are queued and the closing Sync would
                            # commit them: drop the connection instead; the
                            # server rolls back.
                            fairy.invalidate()
                        raise
                if tx.wrote_history:
                    self.notifier.poke()
            except BaseException:
                if pg.broken and fairy.is_valid:
                    # The server went away: never hand this connection out again.
                    fairy.invalidate()
                raise
            finally:
                if not pg.closed:
                    pg.autocommit = False
                fairy.close()

    def history_listener(self) -> Any:
        """LISTENs for committed history (writers NOTIFY); see SqlStore's."""
        with translated(PSYCOPG_ERRORS):
            conn = psycopg.connect(self._libpq_url(), autocommit=True,
                                   application_name="corral-events")
            conn.execute(f"LISTEN {HISTORY_CHANNEL}")
        return _PgListener(conn)

    async def connect_async(self) -> psycopg.AsyncConnection[Any]:
        """An asyncio connection to the database, set up as the pooled ones are
        (server-side prepared statements, JSON read the same way), in
        autocommit mode for :meth:`async_events`."""
        from psycopg.types.json import set_json_loads

        url = self.sa.url.set(drivername="postgresql")
        async with translated_async(PSYCOPG_ERRORS):
            conn = await psycopg.AsyncConnection.connect(
                url.render_as_string(hide_password=False), autocommit=True,
                prepare_threshold=1, application_name="corral")
        set_json_loads(loads_json, conn)
        return conn

    @asynccontextmanager
    async def async_events(self, conn: psycopg.AsyncConnection[Any]
                           ) -> AsyncIterator[PgEventTx]:
        """:meth:`events` on a connection from :meth:`connect_async`: two
        round trips, the closing Sync commits.

        On an error the connection is closed if the transaction had queued
        writes (the closing Sync would commit them; the server rolls back
        instead) or if the server went away; the caller then needs a new one.
        """
        async with translated_async(PSYCOPG_ERRORS):
            try:
                async with conn.pipeline():
                    tx = PgEventTx(conn.cursor(), _run_async)
                    try:
                        yield tx
                    except BaseException:
                        if tx.wrote:
                            await conn.close()
                        raise
                if tx.wrote_history:
                    self.notifier.poke()
            except BaseException:
                if conn.broken:
                    await conn.close()
                raise

    def usable(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        return not conn.closed

    async def close_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.close()
