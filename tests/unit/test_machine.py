"""Transition logic on the shipped board definition, without a database."""

from __future__ import annotations

import pytest

from corral.errors import EventNotAllowed
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
    assert outcome.to_state == "ready"
    assert outcome.counters == {}


def test_disallowed_event_names_the_allowed_ones(machines):
    with pytest.raises(EventNotAllowed) as info:
        machines["board"].compute("rebooting", {}, "install_ok", name="b1")
    assert info.value.allowed == ["maintenance", "retire"]
    assert "allowed events: maintenance, retire" in str(info.value)


def test_failed_states_accept_only_operator_exits(machines):
    board = machines["board"]
    for state in board.definition.failed_states:
        assert board.allowed_events(state) == ("maintenance", "retire")
        assert board.definition.states[state].timeout is None


def test_diagram_mentions_every_state_and_trigger(machines):
    definition = machines["board"].definition
    text = mermaid(definition)
    assert text.startswith("stateDiagram-v2\n")
    for state in definition.states:
        assert state in text
    for transition in definition.transitions:
        assert transition.trigger in text


def test_documented_diagram_is_current(machines):
    from pathlib import Path

    from corral.machines.diagram import replace_block

    doc = Path(__file__).resolve().parents[2] / "docs" / "state-machines.md"
    text = doc.read_text()
    assert replace_block(text, "board", mermaid(machines["board"].definition)) == text, (
        "docs/state-machines.md is stale: run `make docs`")
