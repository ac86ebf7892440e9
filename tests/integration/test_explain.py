"""Why a board is where it is, and how long the oldest machine has sat in
each state (the stuck-work metric)."""

from __future__ import annotations

from prometheus_client import generate_latest

from corral.api.metrics import build_registry
from corral.engine.worker import OperationWorker
from corral.operations.base import OperationFailed, board_handlers
from corral.operations.simulated import SimulatedLab
from corral.power.drivers import simulated_power


def test_explain_says_how_a_board_got_stuck_and_what_comes_next(engine, clock):
    lab = SimulatedLab()

    def refuse(ctx):
        raise OperationFailed("relay 3 did not answer", relay="relay-3")

    worker = OperationWorker(engine, board_handlers(simulated_power(lab), lab, lab)
                             | {"power_cycle": refuse}, owner="t")
    engine.create("board", "b1")
    engine.force_state("board", "b1", "power_cycling", actor="ann", reason="new PSU")
    # One attempt: power_cycle_failed is counted and the state entered again.
    [op] = engine.outbox.lease_operations(owner="t", limit=1, lease_seconds=60)
    worker.run(op)
    clock.advance(20)
    doc = engine.explain("board", "b1", "operator")
    assert doc["state"] == "power_cycling"
    assert doc["entered"]["event"] == "power_cycle_failed"
    assert doc["entered"]["source"] == "operation"
    assert doc["seconds_in_state"] == 20
    assert doc["timeout"] == {"seconds": 60, "then": "power_cycling", "remaining_seconds": 40}
    counter = next(c for c in doc["counters"] if c["name"] == "power_cycle")
    assert (counter["value"], counter["max"], counter["failure"], counter["this_state"]) == (
        1, 3, "failed_power_cycling", True)
    failed = next(op for op in doc["last_operations"] if op["status"] == "failed")
    assert failed["error"] == "relay 3 did not answer"
    assert [op["kind"] for op in doc["waiting_operations"]] == ["power_cycle"]
    assert doc["allowed_events"] == ["maintenance"]  # an operator may not retire
    assert "counter power_cycle is at 1 of 3 (then failed_power_cycling)" in doc["summary"]
    assert "fires in 40 s" in doc["summary"]
    assert engine.explain("board", "b1", "admin")["allowed_events"] == ["maintenance",
                                                                         "retire"]


def test_a_failed_board_explains_the_force_that_put_it_there(engine, clock):
    engine.create("board", "b2")
    engine.force_state("board", "b2", "maintenance", actor="bob", reason="swap SD card")
    doc = engine.explain("board", "b2")
    assert (doc["entered"]["actor"], doc["entered"]["reason"]) == ("bob", "swap SD card")
    assert doc["timeout"] is None
    assert "it has no timeout" in doc["summary"]


def test_the_oldest_machine_per_state_is_a_metric(engine, clock):
    engine.create("board", "old")
    clock.advance(3000)
    engine.create("board", "young")
    clock.advance(600)
    ages = {(k, s): round(t) for k, s, t in engine.sweeper.oldest_in_state(max_age=30)}
    assert ages[("board", "new")] == 3600          # counted now: no aggregate yet
    engine.sweeper.refresh_state_counts()
    clock.advance(5)
    ages = {(k, s): round(t) for k, s, t in engine.sweeper.oldest_in_state(max_age=30)}
    assert ages[("board", "new")] == 3605          # from the aggregate
    text = generate_latest(build_registry(engine, multiprocess=False)).decode()
    line = next(line for line in text.splitlines()
                if line.startswith('corral_state_oldest_seconds{kind="board",state="new"}'))
    assert float(line.split()[-1]) > 3000
