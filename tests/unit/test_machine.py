"""Transition logic on the shipped board definition, without a database."""

from __future__ import annotations

import pytest

from corral.errors import EventNotAllowed, Forbidden
from corral.machines.diagram import mermaid


def test_ready_timeout_reenters_ready_and_polls(machines):
    outcome = machines["board"].compute("ready", {}, "timeout")
    assert (outcome.to_state, outcome.entered, outcome.operations) == ("ready", True, ("poll",))
    assert outcome.timeout == 300


def test_poll_ok_is_internal(machines):
    outcome = machines["board"].compute("ready", {}, "poll_ok")
    assert outcome.to_state == "ready"
    assert not outcome.entered
    assert outcome.operations == ()


def test_counter_fails_exactly_past_its_max(machines):
    board = machines["board"]
    counter = board.definition.states["power_cycling"].counter
    counters: dict[str, int] = {}
    for attempt in range(1, counter.max + 1):
        outcome = board.compute("power_cycling", counters, "timeout")
        assert outcome.to_state == "power_cycling", attempt
        counters = dict(outcome.counters)
        assert counters["power_cycle"] == attempt
    outcome = board.compute("power_cycling", counters, "power_cycle_failed")
    assert outcome.to_state == "failed_power_cycling"
    assert outcome.timeout is None


def test_ready_clears_counters(machines):
    outcome = machines["board"].compute("pinging", {"ping": 3, "power_cycle": 2}, "ping_ok")
    assert outcome.to_state == "check_queued"
    outcome = machines["board"].compute("judging", {"ping": 3, "power_cycle": 2},
                                        "check_passed", role="health")
    assert outcome.to_state == "ready"
    assert outcome.counters == {}


def test_disallowed_event_names_the_allowed_ones(machines):
    with pytest.raises(EventNotAllowed) as info:
        machines["board"].compute("rebooting", {}, "install_ok", name="b1")
    assert info.value.allowed == ["boot_local_failed", "boot_local_ok", "lease_return",
                                  "lease_return_cycle", "maintenance", "retire"]
    assert ("allowed events: boot_local_failed, boot_local_ok, lease_return, "
            "lease_return_cycle, maintenance, retire") in str(info.value)


REFUSALS = [
    # A person firing what only the board reports is pointed to force-state.
    ("board", "install_ok", "admin", None,
     "install_ok is reported by the board itself; "
     "operators can force a state with `corral board force-state`"),
    ("board", "install_ok", "operator", "installing",
     "in state 'installing', install_ok is reported by the board itself; "
     "operators can force a state with `corral board force-state`"),
    ("board", "ping_ok", "operator", None,
     "ping_ok is reported by the worker that ran its operation; "
     "operators can force a state with `corral board force-state`"),
    ("board", "lease_hold", "admin", None,
     "lease_hold is fired by the lease service; "
     "operators can force a state with `corral board force-state`"),
    # An event a person may fire, refused to another role: no force-state hint.
    ("board", "retire", "operator", None,
     "board event 'retire' is fired by an admin, not by an operator"),
    ("board", "retire", "board", None,
     "board event 'retire' is fired by an admin, not by a board's own token"),
    ("board", "reboot", "board", None,
     "board event 'reboot' is fired by an operator or a lease's holder, "
     "not by a board's own token"),
    # Leases have no force-state: nothing to suggest.
    ("lease", "returned", "admin", None,
     "lease event 'returned' is fired by the lease service, not by an admin"),
    ("lease", "release", "admin", None,
     "lease event 'release' is fired by a lease's holder, not by an admin"),
]


@pytest.mark.parametrize(("kind", "event", "role", "state", "message"), REFUSALS,
                         ids=[f"{kind}-{event}-{role}" for kind, event, role, *_ in REFUSALS])
def test_a_refused_firer_is_told_who_fires_the_event(machines, kind, event, role, state,
                                                      message):
    with pytest.raises(Forbidden) as info:
        machines[kind].check_firer(event, role, state)
    assert str(info.value) == message


def test_the_force_state_hint_names_only_commands_that_exist():
    from corral.cli.main import cli
    from corral.machines.machine import FORCED_BY_HAND

    for kind in FORCED_BY_HAND:
        assert "force-state" in cli.commands[kind].commands, kind
    assert "force-state" not in cli.commands["lease"].commands


def test_failed_states_accept_only_operator_exits(machines):
    """Besides the result of switching the board to local boot, which keeps
    it where it is."""
    board = machines["board"]
    for state in board.definition.failed_states:
        assert [e for e in board.allowed_events(state) if not e.startswith("boot_local_")
                and e != "check_unknown"] == ["check", "maintenance", "retire"]
        assert board.definition.states[state].timeout is None
        if "boot_local" not in board.definition.states[state].on_enter:
            continue
        for result in ("boot_local_ok", "boot_local_failed"):
            outcome = board.compute(state, {}, result, name="b1", role="operation")
            assert (outcome.to_state, outcome.entered) == (state, False)


def test_diagram_mentions_every_state_and_trigger(machines):
    definition = machines["board"].definition
    text = mermaid(definition)
    assert text.startswith("stateDiagram-v2\n")
    for state in definition.states:
        assert state in text
    for transition in definition.transitions:
        assert transition.trigger in text


@pytest.mark.parametrize("kind", ["board", "pool", "job"])
def test_documented_diagram_is_current(machines, kind):
    from pathlib import Path

    from corral.machines.diagram import replace_block

    doc = Path(__file__).resolve().parents[2] / "docs" / "state-machines.md"
    text = doc.read_text()
    assert replace_block(text, kind, mermaid(machines[kind].definition)) == text, (
        "docs/state-machines.md is stale: run `make docs`")


def test_declared_vars_are_taken_from_the_payload_and_checked(machines):
    import re

    from corral.errors import InvalidRequest

    pool = machines["pool"]
    outcome = pool.compute("assigned", {}, "override", name="p1",
                           payload={"os_version": "v1", "ttl_seconds": 60, "extra": 1})
    assert outcome.vars == {"os_version": "v1", "ttl_seconds": 60}
    assert not outcome.clear_vars
    for payload, problem in ((None, "os_version (string) is required"),
                             ({"os_version": "v1", "ttl_seconds": True},
                              "ttl_seconds must be of type integer, not True"),
                             ({"os_version": 1.1, "ttl_seconds": 5},
                              "os_version must be of type string, not 1.1")):
        with pytest.raises(InvalidRequest, match=re.escape(problem)):
            pool.compute("assigned", {}, "override", name="p1", payload=payload)
    # Entering idle empties the vars; forcing a state does too.
    assert pool.compute("overridden", {}, "release").clear_vars
    assert pool.enter("failed_override", "idle", "force_state", {}).clear_vars
