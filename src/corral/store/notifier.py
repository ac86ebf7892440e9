"""Telling the event stream's readers that history committed, on PostgreSQL,
once per burst of commits rather than inside each one.

A ``NOTIFY`` in a writer's transaction makes its commit take PostgreSQL's
notification queue lock, one committer of the whole cluster at a time, so
every event path would queue behind every other's commit. Instead a writer,
*after* its commit, pokes this process's notifier; the notifier's thread,
on a connection of its own in autocommit, sends one ``NOTIFY`` for all the
pokes that arrived while it was sending the last one and in the
``NOTIFY_GAP`` after it. A reader is woken
no later than before (the rows are visible once the writer's commit
returned, which is when the poke comes), and the table stays the truth: a
notification lost with a connection only delays a reader until its next
poll (``events_interval``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("corral.store")

# The least time between two NOTIFYs of a process (seconds). Under load a
# poke comes after every commit; waking this thread for each one took the
# interpreter lock from the event loop's callbacks often enough to cost a
# fifth of their rate (docs/performance.md). A reader is woken at most this
# much later; an idle process sends a burst's first NOTIFY at once.
NOTIFY_GAP = 0.01


class HistoryNotifier:
    """One per store and process: :meth:`poke` never blocks and never fails."""

    def __init__(self, connect: Callable[[], Any], channel: str, *,
                 gap: float = NOTIFY_GAP) -> None:
        self._connect = connect
        self._channel = channel
        self._gap = gap
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        #: NOTIFYs sent (tests and curiosity: fewer than the pokes under load).
        self.sent = 0

    def poke(self) -> None:
        if self._pid != os.getpid():
            self._start()
        self._wanted.set()

    def close(self) -> None:
        """Stop the thread and close its connection (waits a moment for it,
        so that the database can be dropped once the store is disposed)."""
        self._closed = True
        self._wanted.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            thread.join(timeout=5)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked process (the API processes) starts its own thread.
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="corral-history-notify",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        conn = None
        while not self._closed:
            self._wanted.wait()
            self._wanted.clear()
            if self._closed:
                break
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                conn.execute(f"NOTIFY {self._channel}")
                self.sent += 1
                # The pokes of the next few milliseconds wait and go as one.
                time.sleep(self._gap)
            except Exception as exc:  # the database away: readers poll meanwhile
                log.warning("history_notify_failed", error=type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(1.0)
                self._wanted.set()
        if conn is not None:
            conn.close()
