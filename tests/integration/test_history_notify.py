"""On PostgreSQL the event stream's readers are woken by a NOTIFY sent after
each burst of commits by the writing process's notifier, never from inside a
writer's transaction (where it would make every commit of the cluster take
the notification lock in turn): every event path wakes a listener, a burst
of commits is coalesced, and a disposed store leaves no connection behind."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

from corral.engine.core import Engine
from corral.store import open_store
from corral.store.postgres import HISTORY_CHANNEL, _write_statements
from corral.store.values import WriteSet

pytestmark = pytest.mark.postgres


def _listener(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    conn.execute(f"LISTEN {HISTORY_CHANNEL}")
    return conn


def _woken(conn: psycopg.Connection[Any]) -> int:
    """Notifications that arrive within 10 s (the first), then any others at once."""
    first = list(conn.notifies(timeout=10, stop_after=1))
    return len(first) + len(list(conn.notifies(timeout=0.5)))


def test_every_event_path_wakes_a_listener_after_its_commit(pg_migrated_url, machines):
    store = open_store(pg_migrated_url)
    engine = Engine(store, machines)
    listener = _listener(pg_migrated_url)
    try:
        engine.import_machines("board", {"n1": {}, "n2": {}})      # a general transaction
        assert _woken(listener) >= 1
        engine.force_state("board", "n1", "ready", actor="t", reason="set-up")
        assert _woken(listener) >= 1
        engine.fire("board", "n1", "reboot", source="operator", actor="t")   # the event path
        assert _woken(listener) >= 1

        async def one_async_event() -> None:
            conn = await store.connect_async()
            try:
                async with store.async_events(conn) as tx:
                    row = await tx.machines.lock("board", "n2")
                    assert row is not None
            finally:
                await store.close_async(conn)
        asyncio.run(one_async_event())          # locked, wrote nothing: nobody is woken
        assert _woken(listener) == 0
    finally:
        listener.close()
        store.dispose()


def test_pokes_while_a_notify_is_on_its_way_are_sent_as_one():
    """The coalescing itself, with a connection whose NOTIFY is held up: the
    50 pokes that arrive meanwhile make one more NOTIFY, not 50."""
    from corral.store.notifier import HistoryNotifier

    release, sending = threading.Event(), threading.Event()
    sent: list[str] = []

    class Held:
        closed = False

        def execute(self, sql: str) -> None:
            sending.set()
            release.wait(10)
            sent.append(sql)

        def close(self) -> None:
            self.closed = True

    notifier = HistoryNotifier(Held, "corral_history")
    notifier.poke()
    assert sending.wait(10)
    for _ in range(50):
        notifier.poke()
    release.set()
    deadline = time.monotonic() + 10
    while notifier.sent < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    notifier.close()
    assert sent == ["NOTIFY corral_history"] * 2


def test_the_write_itself_sends_no_notification():
    from datetime import UTC, datetime

    from corral.store.values import StateChange

    now = datetime.now(UTC)
    batch = WriteSet(changes=[StateChange(id=1, state="ready", state_entered_at=now,
                                          deadline=None, counters={}, epoch=2, updated_at=now)],
                     history=[{"machine_id": 1, "from_state": "new", "to_state": "ready",
                               "event": "e", "source": "operator", "actor": None,
                               "reason": None, "at": now, "payload": None,
                               "operation_id": None}])
    assert not any("notify" in sql.lower() for sql, _ in _write_statements(batch))


def test_a_disposed_store_leaves_no_notifier_connection(pg_migrated_url, machines):
    store = open_store(pg_migrated_url)
    Engine(store, machines).import_machines("board", {"d1": {}})
    assert store.notifier.sent >= 0
    store.dispose()
    with psycopg.connect(pg_migrated_url.replace("postgresql+psycopg", "postgresql"),
                         autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name = 'corral-notify' "
                            "AND datname = current_database()").fetchone()
    assert left == (0,)


def test_pokes_in_the_gap_after_a_notify_are_sent_as_one():
    """After each NOTIFY the notifier lets the pokes of the next moment
    gather (under load one comes after every commit): 20 of them make one
    more NOTIFY once the gap has passed, not 20."""
    from corral.store.notifier import HistoryNotifier

    first = threading.Event()
    sent: list[str] = []

    class Quick:
        closed = False

        def execute(self, sql: str) -> None:
            sent.append(sql)
            first.set()

        def close(self) -> None:
            self.closed = True

    notifier = HistoryNotifier(Quick, "corral_history", gap=3.0)
    notifier.poke()
    assert first.wait(10)
    for _ in range(20):
        notifier.poke()
    deadline = time.monotonic() + 10
    while notifier.sent < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    notifier.close()
    assert sent == ["NOTIFY corral_history"] * 2


def _stream_listeners(url: str) -> int:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        return int(conn.execute("SELECT count(*) FROM pg_stat_activity "
                                "WHERE application_name = 'corral-events'").fetchone()[0])


def test_an_api_process_follows_the_history_only_while_the_stream_is_read(
        pg_migrated_url, machines):
    """Nobody reading the stream: the process's tail neither listens nor
    reads the horizon after each commit (under load it had queried the
    database after every notification). A reader that starts from now gets
    the present horizon and the next event as soon as it commits."""
    from corral.stream import HistoryTail

    store = open_store(pg_migrated_url)
    engine = Engine(store, machines)
    engine.import_machines("board", {"t1": {}})
    engine.force_state("board", "t1", "ready", actor="t", reason="set-up")

    async def scenario() -> tuple[int, int, bool, int]:
        tail = HistoryTail(store, interval=0.2)
        await asyncio.to_thread(tail.start_in, asyncio.get_running_loop())
        try:
            for _ in range(5):
                await asyncio.to_thread(engine.fire, "board", "t1", "poll_ok",
                                        source="operation")
            await asyncio.sleep(0.5)
            idle = _stream_listeners(pg_migrated_url)
            with tail.reading():
                start = await tail.current()
                newest = max(e.id for e in engine.history("board", "t1"))
                await asyncio.to_thread(engine.fire, "board", "t1", "reboot",
                                        source="operator", actor="t")
                woken = await tail.wait_beyond(start, 10)
                reading = _stream_listeners(pg_migrated_url)
            return idle, start - newest, woken, reading
        finally:
            await asyncio.to_thread(tail.stop)

    try:
        idle, behind, woken, reading = asyncio.run(scenario())
    finally:
        store.dispose()
    assert idle == 0
    assert behind == 0
    assert woken
    assert reading == 1
