"""Planning without a database: what an event writes is a pure function of the
definition and the locked rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from corral.engine.events import FireRequest, FireResult, outcome_document
from corral.engine.planning import plan_batch, plan_event, plan_timeout
from corral.errors import Conflict, EventNotAllowed, Forbidden, InvalidRequest, UnknownMachine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store.values import MachineState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def machines() -> MachineSet:
    return MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR))


def board(state: str, *, id: int = 7, name: str = "b1", epoch: int = 4,
          counters: dict[str, int] | None = None, deadline: datetime | None = None
          ) -> MachineState:
    return MachineState(id=id, kind="board", name=name, state=state,
                        state_entered_at=NOW - timedelta(minutes=1), deadline=deadline,
                        counters=counters or {}, epoch=epoch)


def request(event: str, *, name: str = "b1", key: str | None = None, **kw) -> FireRequest:
    return FireRequest(kind="board", name=name, event=event, source="operator",
                       idempotency=("operator", key) if key else None, **kw)


def test_an_entered_state_gets_a_new_epoch_deadline_history_and_operations(machines):
    write = plan_event(machines, board("ready"), "reboot", now=NOW, source="operator",
                       role="operator", actor="alice", reason="flaky", timeout_scale=0.5)
    change = write.change
    assert (change.id, change.state, change.epoch) == (7, "power_cycling", 5)
    assert change.state_entered_at == NOW
    # power_cycling has a 60 s timeout; the scale halves it.
    assert change.deadline == NOW + timedelta(seconds=30)
    assert write.history == {
        "machine_id": 7, "epoch": 5, "from_state": "ready", "to_state": "power_cycling",
        "event": "reboot", "source": "operator", "actor": "alice", "reason": "flaky",
        "at": NOW, "payload": None, "operation_id": None}
    assert write.operations == [{
        "machine_id": 7, "machine_epoch": 5, "kind": "power_cycle", "target": "b1",
        "payload": {"state": "power_cycling", "event": "reboot", "event_payload": None},
        "created_at": NOW}]
    assert write.result == FireResult(kind="board", name="b1", event="reboot",
                                      from_state="ready", to_state="power_cycling", epoch=5,
                                      entered=True, operations=("power_cycle",))
    assert write.vars is None


def test_an_event_that_stays_keeps_the_state_entry_and_its_deadline(machines):
    due = NOW + timedelta(seconds=9)
    row = board("pinging", deadline=due)
    write = plan_event(machines, row, "ping_failed", now=NOW, source="operation",
                       role="operation", operation_id=42)
    assert write.change.state == "pinging"
    assert (write.change.epoch, write.change.deadline) == (4, due)
    assert write.change.state_entered_at == row.state_entered_at
    assert write.change.updated_at == NOW
    assert write.operations == []
    assert write.history["operation_id"] == 42
    assert not write.result.entered


def test_transition_vars_are_planned_with_the_change(machines):
    write = plan_event(machines, board("ready"), "reimage", now=NOW, source="operator",
                       role="operator", payload={"release": "bookworm"})
    assert write.change.state == "pxe_configuring"
    assert write.vars is not None
    assert (write.vars.id, dict(write.vars.values)) == (7, {"release": "bookworm"})


def test_refusals_come_from_the_definition(machines):
    with pytest.raises(EventNotAllowed):
        plan_event(machines, board("ready"), "install_ok", now=NOW, source="callback",
                   role="board")
    with pytest.raises(Forbidden):
        plan_event(machines, board("ready"), "retire", now=NOW, source="operator",
                   role="operator")
    with pytest.raises(InvalidRequest):
        plan_event(machines, board("ready"), "reimage", now=NOW, source="operator",
                   role="operator", payload={"release": 3})


def test_a_timeout_counts_toward_the_failure_state(machines):
    due = NOW - timedelta(seconds=2.5)
    fired = plan_timeout(machines, board("power_cycling", deadline=due), NOW)
    assert fired.cleared is None
    assert fired.write.change.state == "power_cycling"
    assert fired.write.change.counters == {"power_cycle": 1}
    assert fired.write.history["payload"] == {"lag_seconds": 2.5}
    assert fired.write.history["source"] == "timeout"
    # The entry operation runs again, without the timeout's payload.
    assert [op["payload"]["event_payload"] for op in fired.write.operations] == [None]
    last = plan_timeout(machines, board("power_cycling", deadline=due,
                                        counters={"power_cycle": 3}), NOW)
    assert last.write.change.state == "failed_power_cycling"
    assert last.write.change.deadline is None


def test_a_deadline_the_definition_no_longer_explains_is_cleared(machines):
    row = MachineState(id=1, kind="robot", name="r1", state="walking", state_entered_at=NOW,
                       deadline=NOW, counters={}, epoch=2)
    cleared = plan_timeout(machines, row, NOW)
    assert cleared.cleared == "no definition for kind 'robot'"
    assert (cleared.write.change.state, cleared.write.change.deadline) == ("walking", None)
    assert cleared.write.history["reason"] == "deadline cleared: no definition for kind 'robot'"
    stale = plan_timeout(machines, board("maintenance", deadline=NOW), NOW)
    assert stale.cleared is not None
    assert stale.write.change.deadline is None


def test_a_batch_judges_each_event_against_what_its_predecessors_left(machines):
    rows = {("board", "b1"): board("ready")}
    batch = plan_batch(machines, [request("reboot"), request("reboot"),
                                  request("maintenance"), request("reboot", name="b9")],
                       rows, {}, now=NOW)
    first, second, third, fourth = batch.outcomes
    assert isinstance(first, FireResult)
    assert first.to_state == "power_cycling"
    assert isinstance(second, EventNotAllowed)  # power_cycling does not accept reboot
    assert isinstance(third, FireResult)
    assert third.from_state == "power_cycling"
    assert isinstance(fourth, UnknownMachine)
    assert [w.history["epoch"] for w in batch.writes] == [5, 6]
    # One machine, two events: written once in its final state, two history rows.
    [final] = batch.write_set().changes
    assert (final.state, final.epoch) == ("maintenance", 6)
    assert rows == {("board", "b1"): board("ready")}, "the caller's rows are not changed"


def test_a_batch_remembers_and_replays_idempotent_outcomes(machines):
    rows = {("board", "b1"): board("ready")}
    batch = plan_batch(machines, [request("reboot", key="k1"), request("reboot", key="k1"),
                                  request("maintenance", key="k1")], rows, {}, now=NOW)
    fired, replayed, reused = batch.outcomes
    assert isinstance(fired, FireResult)
    assert not fired.replayed
    assert isinstance(replayed, FireResult)
    assert replayed.replayed
    assert replayed.to_state == fired.to_state
    assert isinstance(reused, Conflict)
    assert "use a new key" in str(reused)
    assert len(batch.writes) == 1
    [kept] = batch.remembered
    assert (kept["scope"], kept["key"], kept["machine_id"]) == ("operator", "k1", 7)
    assert kept["outcome"] == outcome_document(fired, request("reboot", key="k1"))
    # A key stored by an earlier transaction replays the same way.
    again = plan_batch(machines, [request("reboot", key="k1")], rows,
                       {("operator", "k1"): kept["outcome"]}, now=NOW)
    assert again.writes == []
    assert again.remembered == []
    assert again.outcomes[0].replayed


def test_the_checks_run_per_request_and_refuse_alone(machines):
    def check(req: FireRequest) -> None:
        if req.reason == "bad":
            raise InvalidRequest("bad reason")

    rows = {("board", "b1"): board("ready")}
    batch = plan_batch(machines, [request("reboot", reason="bad"), request("reboot")], rows,
                       {}, now=NOW, check=check)
    assert isinstance(batch.outcomes[0], InvalidRequest)
    assert isinstance(batch.outcomes[1], FireResult)
    assert len(batch.writes) == 1
