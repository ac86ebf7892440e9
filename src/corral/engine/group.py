"""Group commit: concurrent events in one process share a transaction.

A commit costs a round trip and a WAL flush however little it writes, so one
transaction per event caps a process at its commit rate. Callers of
:meth:`Engine.fire` hand their event to a small pool of committer threads and
wait; each committer takes whatever events are queued (up to ``max_batch``)
and applies them with :meth:`Engine.fire_batch`: one transaction, machines
locked in id order, each event validated alone against the state its
predecessors left. A caller returns only after the commit that holds its event.
Under light load a batch is one event and costs one extra thread hand-off.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING

import structlog

from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.engine.core import Engine, FireRequest, FireResult

log = structlog.get_logger("corral.group_commit")


class GroupCommitter:
    def __init__(self, engine: Engine, *, threads: int = 2, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: deque[tuple[FireRequest, Future[FireResult | CorralError]]] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._threads = [threading.Thread(target=self._run, name=f"corral-commit-{i}",
                                          daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, request: FireRequest) -> FireResult | CorralError:
        """Queue an event and wait until the transaction holding it has committed.

        Raises:
            Whatever made the shared transaction fail (e.g. the database is down).
        """
        return self.enqueue(request).result()

    def enqueue(self, request: FireRequest) -> Future[FireResult | CorralError]:
        """Queue an event; the future resolves once its transaction has committed
        (an asyncio caller awaits it without tying up a thread)."""
        future: Future[FireResult | CorralError] = Future()
        with self._ready:
            if self._closing:
                raise CorralError("the engine is shutting down")
            self._queue.append((request, future))
            self._ready.notify()
        return future

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
                outcomes = self.engine.fire_batch([request for request, _ in batch])
            except BaseException as exc:
                log.warning("group_commit_failed", events=len(batch),
                            error=f"{type(exc).__name__}: {exc}")
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                future.set_result(outcome)
