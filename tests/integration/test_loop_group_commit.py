"""Group commit on the event loop (PostgreSQL): what the committer threads
promise must hold there too: shared transactions, each event judged alone,
a failed batch that writes nothing, recovery from a lost connection."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.engine.core import Engine, FireRequest, Observer
from corral.engine.group import AsyncGroupCommitter
from corral.errors import CorralError, Unavailable
from corral.store import open_store
from corral.store.values import WriteSet
from corral.tokens import TokenStore
from tests.integration.helpers import firing, snapshot
from tests.integration.test_concurrency import EVENTS
from tests.integration.test_group_commit import assert_histories_hold
from tests.serving import read_response, request, serving

pytestmark = pytest.mark.postgres


class Batches(Observer):
    """Records each committed transaction: how many events, on which thread."""

    def __init__(self) -> None:
        self.committed_on: list[tuple[int, str]] = []

    def committed(self, seconds: float, events: int) -> None:
        self.committed_on.append((events, threading.current_thread().name))


@pytest.fixture
def lab(pg_engine: Engine) -> Iterator[Engine]:
    boards = [f"b{i}" for i in range(6)]
    pg_engine.import_machines("board", {b: {} for b in boards})
    for b in boards:
        pg_engine.force_state("board", b, "ready", actor="t", reason="t")
    pg_engine.observer = Batches()
    pg_engine.group.start(threads=2, max_batch=8)
    yield pg_engine
    pg_engine.close()


def req(name: str, event: str, **extra) -> FireRequest:
    return FireRequest(kind="board", name=name, event=event, **firing(event), **extra)


def on_loop(engine: Engine, body):
    """Run ``body()`` on a fresh event loop with the loop committer started."""
    async def main():
        await engine.group.start_loop()
        try:
            return await body()
        finally:
            await engine.group.stop_loop()

    return asyncio.run(main())


def test_events_share_transactions_on_the_loop_each_judged_alone(lab, machines):
    rng = random.Random(11)
    boards = [f"b{i}" for i in range(6)]
    requests = [req(rng.choice(boards), rng.choice(EVENTS)) for _ in range(200)]

    async def fire_all():
        return await asyncio.gather(*(lab.fire_async(r) for r in requests),
                                    return_exceptions=True)

    outcomes = on_loop(lab, fire_all)
    assert_histories_hold(lab, machines, boards, requests, outcomes)
    # Every batch ran on the loop's thread, none on a committer thread; they
    # were shared (200 events, at most 8 per batch) and none was larger.
    batches = lab.observer.committed_on
    assert {thread for _, thread in batches} == {threading.current_thread().name}
    assert sum(n for n, _ in batches) == len(requests)
    assert len(batches) < len(requests)
    assert max(n for n, _ in batches) == 8


def test_idempotency_keys_hold_on_the_loop(lab):
    keyed = req("b1", "reboot", idempotency=("board:b1", "k1"))

    async def twice():
        first = await lab.fire_async(keyed)
        return first, await lab.fire_async(keyed)

    first, again = on_loop(lab, twice)
    assert not first.replayed
    assert again.replayed
    assert again.epoch == first.epoch
    assert [e.event for e in lab.history("board", "b1")].count("reboot") == 1


def test_a_failed_batch_writes_nothing_and_the_next_one_reconnects(lab, monkeypatch):
    before = snapshot(lab)
    # A payload the store cannot write (the payload check, which would refuse
    # it first, is switched off to get a failing write).
    monkeypatch.setattr("corral.engine.firing.check_json", lambda *_, **__: None)
    poison = req("b0", "maintenance", payload={"bad": object()})

    async def poisoned_then_fine():
        failed = await asyncio.gather(lab.fire_async(poison), lab.fire_async(req("b1", "reboot")),
                                      return_exceptions=True)
        assert snapshot(lab) == before
        return failed, await lab.fire_async(req("b2", "reboot"))

    failed, fine = on_loop(lab, poisoned_then_fine)
    # Both events shared the batch: both get its error.
    assert all("cannot store object as JSON" in str(f) for f in failed), failed
    assert (fine.name, fine.to_state) == ("b2", "power_cycling")
    assert lab.get("board", "b0").state == "ready"


def test_a_lost_connection_fails_its_batch_then_recovers(lab, pg_migrated_url):
    async def body():
        await lab.fire_async(req("b1", "reboot"))
        # The server drops the loop's connections.
        pids = [c.info.backend_pid for c in lab.group.loop_committer._free if c is not None]
        assert pids
        with psycopg.connect(pg_migrated_url.replace("+psycopg", ""), autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(Unavailable):
            await lab.fire_async(req("b2", "reboot"))
        return await lab.fire_async(req("b2", "reboot"))

    again = on_loop(lab, body)
    assert (again.name, again.to_state) == ("b2", "power_cycling")
    assert lab.get("board", "b1").state == "power_cycling"


def test_queued_writes_are_never_committed_after_an_error(pg_engine):
    pg_engine.create("board", "b1")
    before = snapshot(pg_engine)

    async def body():
        conn = await pg_engine.store.connect_async()
        try:
            async with pg_engine.store.async_events(conn) as tx:
                row = await tx.machines.lock("board", "b1")
                await tx.write(WriteSet(history=[{
                    "machine_id": row.id, "epoch": 9, "from_state": "new", "to_state": "ready",
                    "event": "x", "source": "operator", "actor": None, "reason": None,
                    "at": row.state_entered_at, "payload": None, "operation_id": None}]))
                raise RuntimeError("after the write, before the commit")
        except RuntimeError:
            pass
        return conn.closed

    assert asyncio.run(body())
    assert snapshot(pg_engine) == before


def test_closing_finishes_queued_events_and_a_gone_waiter_still_commits(lab):
    async def body():
        await lab.group.start_loop()
        waiting = [asyncio.ensure_future(lab.fire_async(req(f"b{i}", "reboot")))
                   for i in range(6)]
        await asyncio.sleep(0)
        waiting[0].cancel()  # Its client went away.
        committer = lab.group.loop_committer
        await lab.group.stop_loop()
        # Stopping waited for the queued events: all six are committed.
        assert {lab.get("board", f"b{i}").state for i in range(6)} == {"power_cycling"}
        with pytest.raises(CorralError, match="shutting down"):
            await committer.submit(req("b0", "maintenance"))
        # Later callers use the committer threads.
        after = await lab.fire_async(req("b0", "power_cycle_ok"))
        return await asyncio.gather(*waiting[1:]), after

    results, after = asyncio.run(body())
    assert [r.to_state for r in results] == ["power_cycling"] * 5
    assert after.to_state == "rebooting"
    assert lab.get("board", "b0").epoch == 4
    assert lab.observer.committed_on[-1][1].startswith("corral-commit")


def test_only_with_postgres_and_group_commit(lab, pg_engine, machines, tmp_path):
    async def started(e):
        await e.group.start_loop()
        committer = e.group.loop_committer
        if committer is not None:
            assert (committer.max_batch, len(committer._free)) == (8, 2)
        await e.group.stop_loop()
        return committer

    assert isinstance(asyncio.run(started(lab)), AsyncGroupCommitter)
    # Without committer threads (group commit off), none on the loop either.
    lab.close()
    assert asyncio.run(started(lab)) is None
    # SQLite: events keep the committer threads.
    sqlite = Engine(open_store(f"sqlite:///{tmp_path / 'corral.db'}"), machines)
    sqlite.group.start(threads=1)
    try:
        assert asyncio.run(started(sqlite)) is None
    finally:
        sqlite.close()


def test_the_served_callback_route_commits_on_the_server_loop(lab):
    """`corral serve`'s app starts the loop committer in its lifespan: board
    callbacks commit on the server's thread, never on a committer thread."""
    tokens = TokenStore(lab.store, cache_seconds=0)
    app = create_app(lab, tokens, CollectorRegistry())
    board_tokens = {f"b{i}": tokens.issue_for_board(f"b{i}") for i in range(6)}
    for board in board_tokens:  # where a board's own token has an event to report
        lab.force_state("board", board, "pxe_booting", actor="t", reason="t")
    report = "/api/v1/boards/{}/events/second_stage_started"
    with serving(app) as (address, _):
        with socket.create_connection(address, timeout=30) as sock, sock.makefile("rb") as stream:
            sock.sendall(b"".join(request("POST", report.format(b), token=t)
                                  for b, t in board_tokens.items()))
            answers = [read_response(stream) for _ in board_tokens]
    assert [status for status, _, _ in answers] == [200] * 6
    threads = {thread for _, thread in lab.observer.committed_on}
    assert threads
    assert not any(t.startswith("corral-commit") for t in threads), threads
    assert {lab.get("board", b).state for b in board_tokens} == {"installing"}


def test_old_connections_are_replaced_before_use(lab, monkeypatch):

    def pids(board):
        return lambda: fired_on(board)

    async def fired_on(board):
        seen = []
        for event in ("reboot", "power_cycle_ok"):
            await lab.fire_async(req(board, event))
            [conn] = [c for c in lab.group.loop_committer._free if c is not None]
            seen.append(conn.info.backend_pid)
        return seen

    first, second = on_loop(lab, pids("b1"))
    assert first == second
    monkeypatch.setattr(lab.store, "recycle_seconds", -1.0)
    first, second = on_loop(lab, pids("b2"))
    assert first != second
    assert {lab.get("board", b).state for b in ("b1", "b2")} == {"rebooting"}
