"""Group commit: concurrent events in one process share a transaction.

A commit costs a round trip and a WAL flush however little it writes, so one
transaction per event caps a process at its commit rate. Callers of
:meth:`Engine.fire` hand their event to a small pool of committer threads and
wait; each committer takes whatever events are queued (up to ``max_batch``)
and applies them with :meth:`Engine.fire_batch`: one transaction, machines
locked in id order, each event validated alone against the state its
predecessors left. A caller returns only after the commit that holds its event.
Under light load a batch is one event and costs one extra thread hand-off.

The HTTP service fires board callbacks from its event loop. There,
:class:`AsyncGroupCommitter` does the same on the loop itself, over asyncio
PostgreSQL connections: while a batch waits for the database the loop goes on
reading requests, and no thread waits for the interpreter lock held by
another. (With committer threads, every step of a batch, each result read
back from the database, first waited for the event loop to let go of the
lock: that wait, not the database, was most of a batch's time.)
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Any, Protocol, TypeAlias

import structlog

from corral.engine.events import FireRequest, FireResult
from corral.errors import CorralError
from corral.store.port import Store

log = structlog.get_logger("corral.group_commit")

Outcome: TypeAlias = "FireResult | CorralError"
# Who waits for an event: a thread (a concurrent future) or a coroutine (an
# asyncio future and its loop).
Waiter: TypeAlias = ("Future[Outcome] | "
                     "tuple[asyncio.AbstractEventLoop, asyncio.Future[Outcome]]")


class Batcher(Protocol):
    """What a committer needs of the engine: fire a batch, sync or on a
    connection of the store."""

    @property
    def store(self) -> Store: ...

    def fire_batch(self, requests: list[FireRequest]) -> list[FireResult | CorralError]: ...

    async def fire_batch_async(self, conn: Any, requests: list[FireRequest]
                               ) -> list[FireResult | CorralError]: ...


class GroupCommit:
    """An engine's group committers: threads for every caller, and one on an
    event loop for its asyncio callers (PostgreSQL). Off until started."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.committer: GroupCommitter | None = None
        self.loop_committer: AsyncGroupCommitter | None = None

    def start(self, *, threads: int = 2, max_batch: int = 64) -> None:
        """Let concurrent ``fire`` calls share transactions (see this module)."""
        if self.committer is None:
            self.committer = GroupCommitter(self.batcher, threads=threads,
                                            max_batch=max_batch)

    async def start_loop(self) -> None:
        """With group commit on and a store that supports it (PostgreSQL), let
        ``fire_async`` calls from the running event loop share transactions on
        the loop itself (see :class:`AsyncGroupCommitter`), with as many
        connections as there are committer threads. Other callers keep the
        threads. Call :meth:`stop_loop` before the loop ends."""
        threaded = self.committer
        if (threaded is None or self.loop_committer is not None
                or not self.batcher.store.supports_async):
            return
        self.loop_committer = AsyncGroupCommitter(self.batcher, connections=threaded.threads,
                                                  max_batch=threaded.max_batch)

    async def stop_loop(self) -> None:
        """Finish the events queued on the loop and close its connections; later
        ``fire_async`` calls use the committer threads."""
        committer, self.loop_committer = self.loop_committer, None
        if committer is not None:
            await committer.aclose()

    def close(self) -> None:
        """Stop group commit threads (pending events are finished first)."""
        if self.committer is not None:
            self.committer.close()
            self.committer = None


class GroupCommitter:
    def __init__(self, engine: Batcher, *, threads: int = 2, max_batch: int = 64) -> None:
        self.engine = engine
        self.threads = threads
        self.max_batch = max_batch
        self._queue: deque[tuple[FireRequest, Waiter]] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._threads = [threading.Thread(target=self._run, name=f"corral-commit-{i}",
                                          daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, request: FireRequest) -> Outcome:
        """Queue an event and wait until the transaction holding it has committed.

        Raises:
            Whatever made the shared transaction fail (e.g. the database is down).
        """
        future: Future[Outcome] = Future()
        self._put(request, future)
        return future.result()

    async def submit_async(self, request: FireRequest) -> Outcome:
        """:meth:`submit` for a coroutine: it waits without holding a thread, and
        all the coroutines of one loop in a batch are woken by a single call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._put(request, (loop, future))
        return await future

    def _put(self, request: FireRequest, waiter: Waiter) -> None:
        with self._ready:
            if self._closing:
                raise CorralError("the engine is shutting down")
            self._queue.append((request, waiter))
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft()
                         for _ in range(min(self.max_batch, len(self._queue)))]
            try:
                outcomes: list[Any] = self.engine.fire_batch([request for request, _ in batch])
                failed = False
            except BaseException as exc:
                log.warning("group_commit_failed", events=len(batch),
                            error=f"{type(exc).__name__}: {exc}")
                outcomes, failed = [exc] * len(batch), True
            _settle([waiter for _, waiter in batch], outcomes, failed)


def _settle(waiters: list[Waiter], outcomes: list[Any], failed: bool) -> None:
    """Hand every waiter its outcome (or the exception that failed the batch)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Outcome], Any]]] = {}
    for waiter, outcome in zip(waiters, outcomes, strict=True):
        if isinstance(waiter, Future):
            if failed:
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)
        else:
            loop, future = waiter
            by_loop.setdefault(loop, []).append((future, outcome))
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, settled, failed)
        except RuntimeError:
            pass  # The loop has closed: nobody waits any more.


def _settle_on_loop(settled: list[tuple[asyncio.Future[Outcome], Any]], failed: bool) -> None:
    for future, outcome in settled:
        if future.done():
            continue  # Cancelled: the client went away; the event stands.
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class AsyncGroupCommitter:
    """Group commit on the running event loop (stores that support it: PostgreSQL).

    Up to ``connections`` batches are in flight at once, each on its own
    connection (opened when first needed, and again after one breaks). An
    event submitted while a connection is free starts a batch at once; the
    others queue, and the next batch to start takes up to ``max_batch`` of
    them. Nothing here blocks the loop: a batch's only synchronous part is
    computing the transitions.
    """

    def __init__(self, engine: Batcher, *, connections: int = 2, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.loop = asyncio.get_running_loop()
        self._queue: deque[tuple[FireRequest, asyncio.Future[Outcome]]] = deque()
        # A free slot per connection not in use; None until first connected.
        self._free: list[Any | None] = [None] * connections
        self._opened: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    async def submit(self, request: FireRequest) -> Outcome:
        """Queue an event; its outcome once the transaction holding it has committed.

        Raises:
            Whatever made the shared transaction fail (e.g. the database is down).
        """
        if self._closing:
            raise CorralError("the engine is shutting down")
        future: asyncio.Future[Outcome] = self.loop.create_future()
        self._queue.append((request, future))
        if self._free:
            task = self.loop.create_task(self._run(self._free.pop()))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        # A waiter that goes away (its client hung up) cancels only its future:
        # the event stays queued, and commits all the same.
        return await future

    async def _run(self, conn: Any | None) -> None:
        try:
            while self._queue:
                batch = [self._queue.popleft()
                         for _ in range(min(self.max_batch, len(self._queue)))]
                try:
                    store = self.engine.store
                    if conn is not None and (not store.usable(conn) or self._expired(conn)):
                        await store.close_async(conn)
                        conn = None
                    if conn is None:
                        conn = await store.connect_async()
                        self._opened[conn] = time.monotonic()
                    outcomes: list[Any] = await self.engine.fire_batch_async(
                        conn, [request for request, _ in batch])
                    failed = False
                except Exception as exc:
                    log.warning("group_commit_failed", events=len(batch),
                                error=f"{type(exc).__name__}: {exc}")
                    outcomes, failed = [exc] * len(batch), True
                _settle_on_loop([(future, outcome) for (_, future), outcome
                                 in zip(batch, outcomes, strict=True)], failed)
        finally:
            self._free.append(conn)

    def _expired(self, conn: Any) -> bool:
        """Older than the engine's other connections may get (as its pool's recycle)."""
        age = time.monotonic() - self._opened.get(conn, 0.0)
        return age > self.engine.store.recycle_seconds

    async def aclose(self) -> None:
        """Refuse new events, finish the queued ones, close the connections."""
        self._closing = True
        while self._running:
            await asyncio.wait(set(self._running))
        for conn in self._free:
            if conn is not None:
                await self.engine.store.close_async(conn)
        self._free = []
