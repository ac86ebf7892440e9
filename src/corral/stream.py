"""The history stream: every history row, in commit order, for whoever follows it.

Three readers follow the history table in commit order: the API's Server-Sent
Events route (``GET /api/v1/events``), webhook delivery (:mod:`corral.webhooks`)
and ``corral watch``. Each row goes out with its history id; a reader that
resumes after an id loses nothing and sees nothing twice. This module is what
they share, below the HTTP layer.

Ids are handed out in one order and committed in another when writers run
concurrently (PostgreSQL, MariaDB): a reader already past id N could miss a
row N-1 that commits later. So each API process follows a *horizon* (one
thread, :class:`HistoryTail`): the newest id every row below which has
settled, from the store (``tx.stream.horizon_candidate`` / ``settled``: on
PostgreSQL the newest id handed out, then the transactions in progress,
waited out; on MariaDB and MySQL the committed history counter, which ids
are taken from in commit order). Clients read only up to it; a row below it
can no longer appear. Writers NOTIFY on PostgreSQL so that the horizon moves
at once; elsewhere, and when a notification is lost, the thread looks again
every ``interval`` seconds: a missed notification delays, never loses.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import structlog

from corral.payload import readable, readable_text
from corral.store.port import Store
from corral.store.values import StreamEntry

log = structlog.get_logger("corral.events")
# Rows read per query while a client catches up.
PAGE = 500
FILTERS = ("kind", "name", "state", "event", "source")


def settled_horizon(store: Store, stop: threading.Event | None = None) -> int:
    """The newest history id every row below which has committed (or never
    will): the store's candidate, once what it names has finished."""
    with store.unit() as tx:
        newest, pending = tx.stream.horizon_candidate()
    while pending and not (stop is not None and stop.is_set()):
        with store.unit() as tx:
            if tx.stream.settled(pending):
                break
        time.sleep(0.005)
    return int(newest)


class HistoryTail:
    """Follows the settled horizon of the history table for one process."""

    def __init__(self, store: Store, *, interval: float = 0.5) -> None:
        self.store = store
        self.interval = interval
        self.horizon = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._advanced: asyncio.Event | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Whether a first horizon was read (not while the database is away).
        self.ready = False
        # Clients reading the stream (counted on the loop); the thread
        # follows the history only while there are some (:meth:`reading`).
        self._readers = 0
        self._wanted = threading.Event()

    def start_in(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start following (in a worker thread: the first horizon is read
        before this returns); waiters live on ``loop``."""
        self._loop = loop
        self._advanced = asyncio.Event()
        try:
            self.horizon = self._settle()
            self.ready = True
        except Exception as exc:  # the database is away: the thread waits for it
            log.warning("event_stream_unavailable", error=str(exc)[:300])
        self._thread = threading.Thread(target=self._follow, name="corral-events", daemon=True)
        self._thread.start()

    @contextmanager
    def reading(self) -> Iterator[None]:
        """While a client reads the stream, on the loop: the thread follows
        the history (an API process nobody reads the stream from does not
        query it after every commit)."""
        self._readers += 1
        self._wanted.set()
        try:
            yield
        finally:
            self._readers -= 1
            if not self._readers:
                self._wanted.clear()

    async def current(self) -> int:
        """The settled horizon now (read afresh: the thread may have been
        idle), for a client that starts from the present."""
        newest = await anyio.to_thread.run_sync(self._settle)
        self._move(newest)
        return self.horizon

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)

    async def wait_beyond(self, cursor: int, timeout: float) -> bool:
        """Wait until the horizon is past ``cursor``; False after ``timeout``
        (counted once, however often the horizon moves short of it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.horizon <= cursor:
            event = self._advanced
            assert event is not None, "HistoryTail.start_in() was not called"
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return False
        return True

    def _settle(self) -> int:
        return settled_horizon(self.store, self._stop)

    def _follow(self) -> None:
        listener = None
        while not self._stop.is_set():
            if self.ready and not self._wanted.is_set():
                # Nobody reads: let go of the listener and wait for a reader.
                if listener is not None:
                    listener.close()
                    listener = None
                self._wanted.wait(self.interval)
                continue
            try:
                if listener is None:
                    listener = self.store.history_listener()
                newest = self._settle()
                # Stopping cuts the wait for writers short: that figure is
                # not settled, so it is never published.
                if newest > self.horizon and self._loop is not None \
                        and not self._stop.is_set():
                    self._loop.call_soon_threadsafe(self._move, newest)
                listener.wait(self.interval)
            except Exception as exc:  # the database is away: look again soon
                log.warning("event_stream_unavailable", error=str(exc)[:300])
                if listener is not None:
                    listener.close()
                    listener = None
                self._stop.wait(1.0)
        if listener is not None:
            listener.close()

    def _move(self, horizon: int) -> None:
        self.ready = True
        if horizon > self.horizon:
            self.horizon = horizon
            event, self._advanced = self._advanced, asyncio.Event()
            assert event is not None
            event.set()


def next_cursor(rows: Sequence[StreamEntry], *, cursor: int, horizon: int,
                limit: int = PAGE) -> int:
    """Where a reader continues after a page of ``rows`` read after ``cursor``
    up to ``horizon``: after its last row when the page was full, else at the
    horizon (nothing else up to it matches the filters)."""
    return rows[-1].entry.id if len(rows) == limit else max(cursor, horizon)


def event_document(row: StreamEntry) -> dict[str, Any]:
    """One stream event, as the API documents it."""
    entry = row.entry
    return {"id": entry.id, "kind": row.kind, "name": row.name, "epoch": entry.epoch,
            "from_state": entry.from_state, "to_state": entry.to_state, "event": entry.event,
            "source": entry.source, "actor": readable_text(entry.actor),
            "reason": readable_text(entry.reason), "at": entry.at.isoformat(),
            "payload": readable(entry.payload), "operation_id": entry.operation_id}


def sse_frame(document: Mapping[str, Any]) -> bytes:
    data = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return f"id: {document['id']}\ndata: {data}\n\n".encode()


async def event_frames(tail: HistoryTail, *, after: int,
                       filters: Mapping[str, Sequence[str]],
                       heartbeat: float) -> AsyncIterator[bytes]:
    """The frames of one client's stream: everything after ``after`` that
    matches ``filters``, then each row as the horizon passes it; a comment
    every ``heartbeat`` seconds of silence keeps proxies from closing it."""
    yield b"retry: 2000\n\n"
    cursor = after
    store = tail.store

    def page(start: int, upto: int) -> list[StreamEntry]:
        with store.unit() as tx:
            return tx.stream.read(after=start, upto=upto, limit=PAGE, filters=filters)

    with tail.reading():
        while True:
            horizon = tail.horizon
            if horizon > cursor:
                rows = await anyio.to_thread.run_sync(page, cursor, horizon)
                for row in rows:
                    yield sse_frame(event_document(row))
                cursor = next_cursor(rows, cursor=cursor, horizon=horizon)
                continue
            if not await tail.wait_beyond(cursor, heartbeat):
                yield b": heartbeat\n\n"


def follow(store: Store, *, after: int | None, filters: Mapping[str, Sequence[str]],
           interval: float = 0.5) -> Iterator[dict[str, Any]]:
    """The stream read straight from the database (``corral watch`` without
    ``--url``): the same rows, in the same order, up to the same horizon."""
    cursor = settled_horizon(store) if after is None else after
    listener = store.history_listener()
    try:
        while True:
            horizon = settled_horizon(store)
            while horizon > cursor:
                with store.unit() as tx:
                    rows = tx.stream.read(after=cursor, upto=horizon, limit=PAGE,
                                             filters=filters)
                for row in rows:
                    yield event_document(row)
                cursor = next_cursor(rows, cursor=cursor, horizon=horizon)
            listener.wait(interval)
    finally:
        listener.close()
