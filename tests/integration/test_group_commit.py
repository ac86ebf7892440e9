"""Batches and group commit: shared transactions, events still judged alone."""

from __future__ import annotations

import asyncio
import random
import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from corral.engine.core import FireRequest
from corral.errors import EventNotAllowed, UnknownMachine
from corral.store.schema import idempotency_keys
from tests.integration.helpers import firing, snapshot
from tests.integration.test_concurrency import EVENTS, replay


def req(name, event):
    return FireRequest(kind="board", name=name, event=event, **firing(event))


def test_batch_judges_each_event_alone(engine):
    engine.import_machines("board", {"b1": {}, "b2": {}})
    engine.force_state("board", "b1", "ready", actor="t", reason="t")
    outcomes = engine.fire_batch([
        req("b1", "reboot"), req("b2", "install_ok"), req("ghost", "retire"),
        req("b1", "power_cycle_ok"), req("b2", "maintenance"),
    ])
    assert [type(o).__name__ for o in outcomes] == [
        "FireResult", "EventNotAllowed", "UnknownMachine", "FireResult", "FireResult"]
    assert isinstance(outcomes[1], EventNotAllowed)
    assert isinstance(outcomes[2], UnknownMachine)
    # b1 took two events in the batch, in order: ready -> power_cycling -> rebooting.
    b1 = engine.get("board", "b1")
    assert (b1.state, b1.epoch) == ("rebooting", 4)
    events = [(e.event, e.to_state) for e in reversed(engine.history("board", "b1"))]
    assert events[-2:] == [("reboot", "power_cycling"), ("power_cycle_ok", "rebooting")]
    assert engine.get("board", "b2").state == "maintenance"


def test_batch_of_refused_events_changes_nothing(engine):
    engine.create("board", "b1")
    before = snapshot(engine)
    outcomes = engine.fire_batch([req("b1", "install_ok"), req("nope", "retire")])
    assert all(isinstance(o, Exception) for o in outcomes)
    assert snapshot(engine) == before


def test_group_commit_under_concurrency_keeps_histories_serial(engine, machines, backend):
    boards = [f"b{i}" for i in range(4)]
    engine.import_machines("board", {b: {} for b in boards})
    for b in boards:
        engine.force_state("board", b, "ready", actor="t", reason="t")
    engine.group.start(threads=2, max_batch=16)
    accepted = []
    errors = []

    def hammer(seed):
        rng = random.Random(seed)
        for _ in range(60 if backend == "postgres" else 25):
            try:
                event = rng.choice(EVENTS)
                engine.fire("board", rng.choice(boards), event, **firing(event))
                accepted.append(1)
            except EventNotAllowed:
                pass
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    assert not errors
    assert replayed_events(engine, machines, boards) == len(accepted)


def test_idempotency_key_replays_the_first_outcome(engine):
    engine.create("board", "b1")
    engine.force_state("board", "b1", "ready", actor="t", reason="t")
    first = engine.fire("board", "b1", "reboot", **firing("reboot"), idempotency=("k", "1"))
    before = snapshot(engine)
    again = engine.fire("board", "b1", "reboot", **firing("reboot"), idempotency=("k", "1"))
    assert again.replayed
    assert not first.replayed
    assert (again.to_state, again.epoch) == (first.to_state, first.epoch)
    assert snapshot(engine) == before
    # Another scope has its own key space.
    with pytest.raises(EventNotAllowed):
        engine.fire("board", "b1", "reboot", **firing("reboot"), idempotency=("other", "1"))


def test_idempotency_key_replays_a_refusal(engine):
    engine.create("board", "b1")
    with pytest.raises(EventNotAllowed):
        engine.fire("board", "b1", "reboot", **firing("reboot"), idempotency=("k", "x"))
    engine.force_state("board", "b1", "ready", actor="t", reason="t")
    # Now reboot would be allowed, but the key's first answer stands.
    with pytest.raises(EventNotAllowed) as info:
        engine.fire("board", "b1", "reboot", **firing("reboot"), idempotency=("k", "x"))
    assert info.value.state == "new"
    assert engine.get("board", "b1").state == "ready"


def test_repeated_key_in_one_batch_fires_once(engine):
    engine.create("board", "b1")
    engine.force_state("board", "b1", "ready", actor="t", reason="t")
    r = FireRequest(kind="board", name="b1", event="reboot", **firing("reboot"),
                    idempotency=("k", "same"))
    first, second = engine.fire_batch([r, r])
    assert second.replayed
    assert second.epoch == first.epoch
    assert [e.event for e in engine.history("board", "b1")].count("reboot") == 1


def keyed(key):
    return FireRequest(kind="board", name="b1", event="reboot", **firing("reboot"),
                       idempotency=("board:b1", key))


def stored_keys(engine):
    with engine.store.sa.begin() as conn:
        return {k for k, in conn.execute(select(idempotency_keys.c.key))}


def test_expired_idempotency_keys_are_forgotten(engine, clock):
    engine.create("board", "b1")
    # Refusals are remembered like transitions: b1 is `new`, reboot is refused.
    engine.fire_batch([keyed(f"old{i}") for i in range(20)])
    clock.advance(2 * 3600)
    engine.fire_batch([keyed(f"young{i}") for i in range(3)])
    clock.advance(23 * 3600)
    # In batches of 7: three full ones, then one of 6 ends the pass.
    assert engine.sweeper.expire_idempotency_keys(timedelta(hours=24), batch=7) == 20
    assert stored_keys(engine) == {"young0", "young1", "young2"}
    assert engine.sweeper.expire_idempotency_keys(timedelta(hours=24), batch=7) == 0
    engine.force_state("board", "b1", "ready", actor="t", reason="t")
    # A forgotten key is a new request; a remembered one still replays.
    fresh = engine.fire_batch([keyed("old0")])[0]
    assert not fresh.replayed
    assert fresh.to_state == "power_cycling"
    with pytest.raises(EventNotAllowed) as info:
        engine.fire("board", "b1", "reboot", **firing("reboot"),
                    idempotency=("board:b1", "young0"))
    assert info.value.state == "new"
    assert stored_keys(engine) == {"young0", "young1", "young2", "old0"}


@pytest.mark.postgres
def test_workers_expiring_at_once_forget_each_key_once(pg_engine, clock):
    pg_engine.create("board", "b1")
    for start in range(0, 2000, 500):
        pg_engine.fire_batch([keyed(f"k{i}") for i in range(start, start + 500)])
    clock.advance(48 * 3600)
    counts: list[int] = []
    workers = [threading.Thread(target=lambda: counts.append(
        pg_engine.sweeper.expire_idempotency_keys(timedelta(hours=24), batch=50)))
        for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(counts) == 2000
    assert stored_keys(pg_engine) == set()


def assert_histories_hold(engine, machines, boards, requests, outcomes):
    """Each concurrent request got its own event's outcome (or a refusal), some
    but not all were refused, and every board's history replays to its row
    with exactly one entry per accepted event."""
    for fired_request, outcome in zip(requests, outcomes, strict=True):
        if isinstance(outcome, Exception):
            assert isinstance(outcome, EventNotAllowed), outcome
        else:
            assert (outcome.name, outcome.event) == (fired_request.name, fired_request.event)
    fired = sum(not isinstance(o, Exception) for o in outcomes)
    assert 0 < fired < len(requests)
    assert replayed_events(engine, machines, boards) == fired


def replayed_events(engine, machines, boards):
    """Events in the boards' histories since they were set up (created, then
    forced to ready), each history checked to replay to its row."""
    total = 0
    for b in boards:
        entries = list(reversed(engine.history("board", b, limit=10_000)))
        state, counters, epoch = replay(machines["board"], entries)
        row = engine.get("board", b)
        assert (row.state, row.counters, row.epoch) == (state, counters, epoch)
        total += len(entries) - 2
    return total


def test_coroutines_wait_for_their_own_outcomes(engine, machines, monkeypatch):
    """fire_async with group commit: each coroutine gets its own event's outcome,
    and an exception that fails a whole batch reaches every coroutine in it."""
    boards = [f"b{i}" for i in range(6)]
    engine.import_machines("board", {b: {} for b in boards})
    for b in boards:
        engine.force_state("board", b, "ready", actor="t", reason="t")
    engine.group.start(threads=2, max_batch=8)
    rng = random.Random(7)
    requests = [req(rng.choice(boards), rng.choice(EVENTS)) for _ in range(120)]

    async def fire_all():
        return await asyncio.gather(*(engine.fire_async(r) for r in requests),
                                    return_exceptions=True)

    outcomes = asyncio.run(fire_all())
    assert_histories_hold(engine, machines, boards, requests, outcomes)

    # A payload the store cannot write fails the shared transaction: every
    # coroutine of that batch gets the error and nothing of it is written.
    # (The payload check, which would refuse it first, is switched off.)
    monkeypatch.setattr("corral.engine.firing.check_json", lambda *_, **__: None)
    engine.force_state("board", "b0", "ready", actor="t", reason="t")
    before = snapshot(engine)
    poison = FireRequest(kind="board", name="b0", event="maintenance", **firing("maintenance"),
                         payload={"bad": object()})

    async def fire_poisoned():
        return await asyncio.gather(engine.fire_async(poison), return_exceptions=True)

    [failed] = asyncio.run(fire_poisoned())
    assert re.search("not JSON serializable|cannot store object as JSON", str(failed))
    assert snapshot(engine) == before
    engine.close()
