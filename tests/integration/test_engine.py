"""The engine on a real database: one transaction per event, deadlines,
counters and the operations outbox. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import structlog
from structlog.testing import capture_logs

from corral.config import Settings
from corral.engine.worker import OperationWorker
from corral.errors import Conflict, CorralError, EventNotAllowed, StateMismatch, UnknownMachine
from corral.health.definitions import Definitions
from corral.health.service import HealthPass
from corral.health.steps import HealthSteps
from corral.machines.loader import expand_sources
from corral.operations.base import OperationFailed, board_handlers
from corral.operations.simulated import SimulatedLab, SimulatedRates
from corral.power.drivers import simulated_power
from tests.integration.helpers import history_count, operations_of, snapshot

PERFECT = SimulatedRates(power_cycle_failure=0, ping_failure=0, poll_failure=0)


def perfect_worker(engine, **kwargs):
    lab = SimulatedLab(rates=PERFECT)
    return OperationWorker(engine, board_handlers(simulated_power(lab), lab, lab), owner="test",
                           **kwargs)


def test_create_starts_in_initial_state_with_deadline(engine, clock):
    result = engine.create("board", "b1", attrs={"arch": "arm64"})
    row = engine.get("board", "b1")
    assert (result.to_state, row.state, row.epoch) == ("new", "new", 1)
    assert row.deadline == clock() + __import__("datetime").timedelta(seconds=10)
    [entry] = engine.history("board", "b1")
    assert (entry.event, entry.from_state, entry.to_state) == ("create", "", "new")
    with pytest.raises(Conflict):
        engine.create("board", "b1")


def _transitions(machines):
    """(source, trigger, dest, firer) for every transition and timeout in board.yaml."""
    definition = machines["board"].definition
    states = dict(definition.states)
    cases = []
    for t in definition.transitions:
        for source in expand_sources(t.sources, states):
            cases.append((source, t.trigger, t.dest or source, t.by[0]))
    for state in states.values():
        if state.on_timeout:
            dest = state.on_timeout if state.on_timeout in states else next(
                c[2] for c in cases if c[0] == state.name and c[1] == state.on_timeout)
            cases.append((state.name, "timeout", dest, "timeout"))
    return cases


SOURCES = {"board": "callback", "operation": "operation", "operator": "operator",
           "admin": "operator", "holder": "operator", "lease": "operator",
           "health": "operator"}


def test_every_transition_in_board_yaml(engine, machines, clock):
    cases = _transitions(machines)
    assert len(cases) > 40
    for index, (source, trigger, dest, firer) in enumerate(cases):
        name = f"t{index}"
        engine.create("board", name)
        engine.force_state("board", name, source, actor="test", reason="set up", role="admin")
        before = engine.get("board", name)
        if trigger == "timeout":
            clock.advance(machines["board"].definition.states[source].timeout + 1)
            assert engine.sweeper.sweep_timeouts() >= 1
        else:
            # The lease scheduler's events carry the release to install.
            payload = {"release": "jammy"} if trigger.startswith("lease_re") else None
            engine.fire("board", name, trigger, source=SOURCES[firer], role=firer,
                        payload=payload)
        after = engine.get("board", name)
        assert after.state == dest, (source, trigger)
        entered = dest != source or trigger == "timeout" or before.epoch != after.epoch
        latest = engine.history("board", name, limit=1)[0]
        assert (latest.event, latest.from_state, latest.to_state) == (trigger, source, dest)
        if entered:
            assert after.epoch == before.epoch + 1
            expected_ops = machines["board"].definition.states[dest].on_enter
            ops = [op for op in operations_of(engine, name) if op.machine_epoch == after.epoch]
            assert tuple(op.kind for op in ops) == expected_ops
        else:
            assert after.epoch == before.epoch
            assert after.deadline == before.deadline


def test_counter_reaches_failure_exactly_at_threshold(engine, machines, clock):
    counter = machines["board"].definition.states["pinging"].counter
    engine.create("board", "b1")
    engine.force_state("board", "b1", "pinging", actor="test", reason="set up")
    for expected in range(1, counter.max + 1):
        clock.advance(16)
        assert engine.sweeper.sweep_timeouts() == 1
        row = engine.get("board", "b1")
        assert (row.state, row.counters["ping"]) == ("pinging", expected)
    clock.advance(16)
    assert engine.sweeper.sweep_timeouts() == 1
    row = engine.get("board", "b1")
    assert row.state == "failed_pinging"
    assert row.counters["ping"] == counter.max + 1
    assert row.deadline is None
    clock.advance(10_000)
    assert engine.sweeper.sweep_timeouts() == 0


def test_terminal_states_have_no_deadline(engine, machines):
    engine.create("board", "b1")
    for name, state in machines["board"].definition.states.items():
        if state.terminal:
            engine.force_state("board", "b1", name, actor="test", reason="check", role="admin")
            assert engine.get("board", "b1").deadline is None, name


def test_disallowed_event_changes_nothing(engine):
    engine.create("board", "b1")
    before = snapshot(engine)
    with pytest.raises(EventNotAllowed) as info:
        engine.fire("board", "b1", "reboot", source="operator")
    # The events the state accepts that the firer may fire (retire: admins).
    assert info.value.allowed == ["maintenance"]
    with pytest.raises(EventNotAllowed) as info:
        engine.fire("board", "b1", "reboot", source="operator", role="admin")
    assert info.value.allowed == ["maintenance", "retire"]
    with pytest.raises(EventNotAllowed) as info:
        engine.fire("board", "b1", "install_ok", source="callback")
    assert info.value.allowed == []
    assert snapshot(engine) == before


def test_timeout_cannot_be_fired_by_hand(engine):
    engine.create("board", "b1")
    before = snapshot(engine)
    with pytest.raises(CorralError, match="deadline sweep"):
        engine.fire("board", "b1", "timeout", source="operator")
    assert snapshot(engine) == before


def test_unknown_board(engine):
    with pytest.raises(UnknownMachine, match="unknown board 'ghost'"):
        engine.fire("board", "ghost", "retire", source="operator", role="admin")
    with pytest.raises(UnknownMachine):
        engine.get("board", "ghost")


def test_force_state_is_conditional_and_runs_entry_operations(engine):
    engine.create("board", "b1")
    before = snapshot(engine)
    with pytest.raises(StateMismatch, match="is in state 'new', not 'ready'"):
        engine.force_state("board", "b1", "maintenance", actor="ann", reason="x",
                           if_state="ready")
    assert snapshot(engine) == before
    result = engine.force_state("board", "b1", "ready", actor="ann", reason="repaired relay",
                                if_state="new")
    assert result.to_state == "ready"
    latest = engine.history("board", "b1", limit=1)[0]
    assert (latest.source, latest.actor, latest.reason) == ("operator", "ann", "repaired relay")
    assert [op.kind for op in operations_of(engine, "b1")] == ["poll"]
    with pytest.raises(CorralError, match="reason is required"):
        engine.force_state("board", "b1", "ready", actor="ann", reason="  ")


def test_sweep_fires_each_due_deadline_once_in_batches(engine, clock):
    engine.import_machines("board", {f"b{i}": {} for i in range(23)})
    assert engine.sweeper.sweep_timeouts(batch=5) == 0
    clock.advance(11)
    assert engine.sweeper.sweep_timeouts(batch=5) == 23
    assert engine.sweeper.sweep_timeouts(batch=5) == 0
    assert {r.state for r in engine.list_machines("board")} == {"check_queued"}


def test_operations_drive_a_board_to_ready(engine, clock):
    """A new board is health-checked (a power cycle and a ping by default);
    a board that power-cycled is checked again before it is ready."""
    engine.create("board", "b1")
    lab = SimulatedLab(rates=PERFECT)
    handlers = board_handlers(simulated_power(lab), lab, lab)
    handlers["health_check"] = HealthSteps(store=engine.store, definitions=Definitions(()),
                                           handlers=dict(handlers), pause=0.01)
    worker = OperationWorker(engine, handlers, owner="test")
    health = HealthPass(engine, Settings(), Definitions(()))
    clock.advance(11)
    engine.sweeper.sweep_timeouts()                      # new -> check_queued
    assert engine.get("board", "b1").state == "check_queued"
    health.run_pass()                                    # admit -> checking (+ health_check op)
    assert worker.run_pending() == 1                     # health_check_ok -> judging
    health.run_pass()                                    # check_passed -> ready (+ poll op)
    assert worker.run_pending() == 1
    assert engine.get("board", "b1").state == "ready"
    engine.fire("board", "b1", "reboot", source="operator")   # ready -> power_cycling
    # power_cycle_ok -> rebooting, whose entry switches the board's netboot to
    # its local disk (boot_local_ok keeps it there).
    assert worker.run_pending() == 2
    assert engine.get("board", "b1").state == "rebooting"
    clock.advance(46)
    engine.sweeper.sweep_timeouts()                      # rebooting -> pinging (+ ping op)
    # ping_ok -> check_queued: checked before it is ready again.
    assert worker.run_pending() == 1
    assert engine.get("board", "b1").state == "check_queued"
    health.run_pass()
    worker.run_pending()
    health.run_pass()
    worker.run_pending()
    assert engine.get("board", "b1").state == "ready"
    events = [(e.event, e.source) for e in reversed(engine.history("board", "b1"))]
    assert events == [("create", "operator"), ("timeout", "timeout"),
                      ("admit", "operator"), ("health_check_ok", "operation"),
                      ("check_passed", "operator"), ("poll_ok", "operation"),
                      ("reboot", "operator"),
                      ("power_cycle_ok", "operation"), ("boot_local_ok", "operation"),
                      ("timeout", "timeout"), ("ping_ok", "operation"),
                      ("admit", "operator"), ("health_check_ok", "operation"),
                      ("check_passed", "operator"), ("poll_ok", "operation")]
    assert {op.status for op in operations_of(engine, "b1")} == {"done"}


def test_failed_operation_reports_failed_event(engine, clock):
    lab = SimulatedLab(rates=SimulatedRates(power_cycle_failure=0, ping_failure=0,
                                            poll_failure=0, dead_boards=("b1",)))
    worker = OperationWorker(engine, board_handlers(simulated_power(lab), lab, lab), owner="test")
    engine.create("board", "b1")
    engine.force_state("board", "b1", "power_cycling", actor="t", reason="t")
    for _ in range(4):
        worker.run_pending()
    row = engine.get("board", "b1")
    assert row.state == "failed_power_cycling"
    assert row.counters["power_cycle"] == 4
    failed = [op for op in operations_of(engine, "b1") if op.status == "failed"]
    assert len(failed) == 4
    assert "dead" in failed[0].error


def test_stale_result_is_recorded_and_ignored(engine):
    engine.create("board", "b1")
    engine.force_state("board", "b1", "power_cycling", actor="t", reason="t")
    [op] = engine.outbox.lease_operations(owner="w1", limit=10, lease_seconds=60)
    engine.force_state("board", "b1", "maintenance", actor="t", reason="pulled the board")
    history_before = history_count(engine)
    result = engine.outbox.report_operation(op, ok=True)
    assert result.ignored
    assert "stale" in result.note
    assert engine.get("board", "b1").state == "maintenance"
    assert history_count(engine) == history_before
    [stored] = [o for o in operations_of(engine, "b1") if o.id == op.id]
    assert stored.status == "stale"
    again = engine.outbox.report_operation(op, ok=True)
    assert again.ignored
    assert "already stale" in again.note


def test_duplicate_result_is_ignored(engine):
    engine.create("board", "b1")
    engine.force_state("board", "b1", "power_cycling", actor="t", reason="t")
    [op] = engine.outbox.lease_operations(owner="w1", limit=10, lease_seconds=60)
    assert engine.outbox.report_operation(op, ok=True).to_state == "rebooting"
    count = history_count(engine)
    assert engine.outbox.report_operation(op, ok=True).ignored
    assert history_count(engine) == count


def test_expired_lease_is_reclaimed(engine, clock):
    engine.create("board", "b1")
    engine.force_state("board", "b1", "power_cycling", actor="t", reason="t")
    [op] = engine.outbox.lease_operations(owner="dead-worker", limit=10, lease_seconds=30)
    assert engine.outbox.lease_operations(owner="w2", limit=10, lease_seconds=30) == []
    clock.advance(31)
    [again] = engine.outbox.lease_operations(owner="w2", limit=10, lease_seconds=30)
    assert (again.id, again.attempts, again.lease_owner) == (op.id, 2, "w2")
    assert engine.outbox.report_operation(again, ok=True).to_state == "rebooting"


def test_transient_errors_retry_with_backoff_then_fail(engine, clock):
    calls = []

    def flaky(ctx):
        calls.append(ctx.attempt)
        raise ConnectionError("relay controller unreachable")

    lab = SimulatedLab(rates=PERFECT)
    handlers = board_handlers(simulated_power(lab), lab, lab) | {"power_cycle": flaky}
    worker = OperationWorker(engine, handlers, owner="t", max_attempts=3, retry_delay=10)
    engine.create("board", "b1")
    engine.force_state("board", "b1", "power_cycling", actor="t", reason="t")
    worker.run_pending()
    assert calls == [1]
    worker.run_pending()
    assert calls == [1], "retried before its backoff"
    clock.advance(10)
    worker.run_pending()
    assert calls == [1, 2]
    clock.advance(20)
    worker.run_pending()
    # The third failure reports power_cycle_failed; re-entering power_cycling
    # writes a fresh operation, whose first attempt follows at once.
    assert calls == [1, 2, 3, 1]
    row = engine.get("board", "b1")
    assert row.counters == {"power_cycle": 1}
    [op] = [o for o in operations_of(engine, "b1") if o.kind == "power_cycle"][:1]
    assert op.status == "failed"
    assert "relay controller unreachable" in op.error


def test_operation_failed_is_not_retried(engine):
    def refuse(ctx):
        raise OperationFailed("relay refused")

    lab = SimulatedLab(rates=PERFECT)
    worker = OperationWorker(engine, board_handlers(simulated_power(lab), lab, lab)
                             | {"power_cycle": refuse}, owner="t")
    engine.create("board", "b1")
    engine.force_state("board", "b1", "power_cycling", actor="t", reason="t")
    worker.run_pending()
    latest = next(e for e in engine.history("board", "b1", limit=5)
                  if not e.event.startswith("boot_local_"))
    assert (latest.event, latest.reason) == ("power_cycle_failed", "relay refused")


def test_transition_is_logged_with_context(engine):
    engine.create("board", "b1")
    with capture_logs() as logs:
        engine.force_state("board", "b1", "ready", actor="t", reason="t")
    [entry] = [e for e in logs if e["event"] == "transition"]
    assert entry["board"] == "b1"
    assert (entry["from_state"], entry["to_state"], entry["_event"], entry["source"]) == (
        "new", "ready", "force_state", "operator")
    structlog.reset_defaults()


def test_import_is_all_or_nothing(engine):
    engine.create("board", "b2")
    before = snapshot(engine)
    with pytest.raises(Conflict):
        engine.import_machines("board", {"b1": {}, "b2": {}}, update_existing=False)
    assert snapshot(engine) == before
    created = engine.import_machines("board", {"b1": {"arch": "x"}, "b2": {"arch": "y"}})
    assert [r.name for r in created] == ["b1"]
    assert engine.get("board", "b2").attrs == {"arch": "y"}


def test_a_batch_of_machine_rows_is_rewritten_each_with_its_own_values(engine, clock):
    """One statement rewrites a sweep batch on MariaDB (CASE id WHEN ...);
    each row gets exactly its own state, deadline (NULL
    included), counters, epoch and times, and rows outside the batch none."""
    from datetime import timedelta

    from corral.store.values import StateChange

    engine.import_machines("board", {f"r{i}": {} for i in range(7)})
    with engine.store.unit() as tx:
        rows = {r.name: r for r in tx.machines.list("board")}
        at = clock() + timedelta(microseconds=123456)
        changes = [StateChange(id=rows[f"r{i}"].id, state=f"state-{i}",
                               state_entered_at=at + timedelta(seconds=i),
                               deadline=None if i % 2 == 0 else at + timedelta(hours=i),
                               counters={"tries": i, **({"other": 1} if i == 3 else {})},
                               epoch=rows[f"r{i}"].epoch + i, updated_at=at)
                   for i in range(6)]
        tx.machines.update(changes)
    with engine.store.unit() as tx:
        after = {r.name: r for r in tx.machines.list("board")}
    for i, change in enumerate(changes):
        row = after[f"r{i}"]
        assert (row.state, row.state_entered_at, row.deadline, row.counters, row.epoch) == (
            change.state, change.state_entered_at, change.deadline, dict(change.counters),
            change.epoch), i
    assert (after["r6"].state, after["r6"].epoch) == (rows["r6"].state, rows["r6"].epoch)


def test_a_batch_update_waits_only_for_its_own_rows(engine, backend):
    """Two batches holding disjoint boards both write: the rewrite of one
    batch's rows never waits for rows another transaction holds (on MariaDB
    an UPDATE joined to its values scanned and locked the whole table, and
    two group-commit batches deadlocked)."""
    import threading
    from datetime import timedelta

    from corral.store.values import StateChange

    if backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: no two batches to overlap")
    engine.import_machines("board", {f"r{i}": {} for i in range(4)})
    held, release = threading.Event(), threading.Event()

    def other_batch():
        with engine.store.unit() as tx:
            tx.machines.lock_many([("board", "r2"), ("board", "r3")])
            held.set()
            release.wait(60)

    other = threading.Thread(target=other_batch)
    other.start()
    try:
        assert held.wait(60)
        with engine.store.unit() as tx:
            # A wait for the other transaction's rows fails in 5 s, not never.
            tx.conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'" if backend == "postgres"
                                    else "SET SESSION innodb_lock_wait_timeout = 5")
            mine = tx.machines.lock_many([("board", "r0"), ("board", "r1")])
            tx.machines.update([StateChange(
                id=row.id, state="moved", state_entered_at=row.state_entered_at,
                deadline=row.state_entered_at + timedelta(hours=1), counters={},
                epoch=row.epoch + 1, updated_at=row.state_entered_at) for row in mine])
    finally:
        release.set()
        other.join()
    assert [engine.get("board", f"r{i}").state for i in range(4)] == [
        "moved", "moved", "new", "new"]
