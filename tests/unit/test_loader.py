"""Definitions are validated like input: every problem, with file and line."""

from __future__ import annotations

import textwrap

import pytest

from corral.machines import DefinitionError, load_definitions
from corral.machines.loader import parse_definition
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.yamlio import load_yaml

MINIMAL = """\
kind: widget
initial: idle
states:
  idle:
    timeout: 5
    on_timeout: idle
    on_enter: [poke]
  broken:
    failed: true
transitions:
  - {trigger: poke_ok, source: idle, dest: null, by: operation}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(textwrap.dedent(text), "widget.yaml")
    return [str(p) for p in info.value.problems]


def test_shipped_definitions_load():
    definitions = load_definitions(DEFAULT_STATEMACHINES_DIR)
    board = definitions["board"]
    assert board.initial == "new"
    assert set(board.failed_states) == {"failed_power_cycling", "failed_pinging",
                                        "failed_pxe_config", "failed_boot_device",
                                        "failed_pxe_booting",
                                        "failed_installing", "failed_returning",
                                        "failed_health"}
    for name in ("new", "ready", "power_cycling", "rebooting", "pinging", "pxe_configuring",
                 "pxe_power_cycling", "pxe_booting", "installing", "maintenance", "retired",
                 "check_queued", "checking", "judging", "suspect", "unknown"):
        assert name in board.states


def test_minimal_definition_loads():
    definition = parse_definition(MINIMAL, "widget.yaml")
    assert definition.kind == "widget"
    assert definition.states["idle"].timeout == 5.0
    assert definition.states["broken"].terminal


def test_unknown_key_names_file_line_and_allowed_keys():
    [problem] = problems_of(MINIMAL.replace("    on_timeout: idle\n",
                                            "    on_timeout: idle\n    retries: 3\n"))
    assert problem.startswith("widget.yaml:7: states.idle: unknown key 'retries'")
    assert "(allowed: description, timeout, on_timeout, counter" in problem


def test_unknown_target_state():
    [problem] = problems_of(MINIMAL.replace("dest: null", "dest: nowhere"))
    assert problem.startswith("widget.yaml:11:")
    assert "unknown target state 'nowhere'" in problem
    assert "states: idle, broken" in problem


def test_counter_without_failure_state():
    text = MINIMAL.replace("    on_enter: [poke]\n",
                           "    on_enter: [poke]\n    counter: {max: 3}\n")
    [problem] = problems_of(text)
    assert problem.startswith("widget.yaml:8:")
    assert "states.idle.counter: missing required key 'failure'" in problem


def test_counter_failure_state_must_exist_and_be_terminal():
    text = MINIMAL.replace("    on_enter: [poke]\n",
                           "    on_enter: [poke]\n    counter: {max: 3, failure: idle}\n")
    [problem] = problems_of(text)
    assert "must be terminal" in problem
    text = MINIMAL.replace("    on_enter: [poke]\n",
                           "    on_enter: [poke]\n    counter: {max: 3, failure: gone}\n")
    [problem] = problems_of(text)
    assert "counter failure state 'gone' does not exist" in problem


def test_every_problem_is_reported_at_once():
    text = MINIMAL.replace("kind: widget", "kind: widget\ncolour: red").replace(
        "dest: null", "dest: nowhere").replace("timeout: 5", "timeout: -1")
    found = problems_of(text)
    assert len(found) == 3
    assert any("unknown key 'colour'" in p for p in found)
    assert any("nowhere" in p for p in found)
    assert any("states.idle.timeout: must be a number above 0" in p for p in found)


def test_terminal_state_cannot_time_out():
    text = MINIMAL.replace("    failed: true\n", "    failed: true\n    timeout: 10\n")
    assert any("terminal state 'broken' cannot have 'timeout'" in p for p in problems_of(text))


def test_timeout_needs_on_timeout():
    text = MINIMAL.replace("    on_timeout: idle\n", "")
    assert any("has a timeout but no on_timeout" in p for p in problems_of(text))


def test_on_timeout_must_be_a_state_or_an_accepted_event():
    text = MINIMAL.replace("on_timeout: idle", "on_timeout: explode")
    [problem] = problems_of(text)
    assert "on_timeout 'explode' is neither a state nor an event" in problem


def test_duplicate_trigger_from_one_source():
    text = MINIMAL + "  - {trigger: poke_ok, source: idle, dest: broken, by: operation}\n"
    [problem] = problems_of(text)
    assert "already defined on line 11" in problem


def test_timeout_cannot_be_declared_as_a_transition():
    text = MINIMAL + "  - {trigger: timeout, source: idle, dest: broken, by: timeout}\n"
    assert any("fired by the deadline sweep" in p for p in problems_of(text))


def test_syntax_error_has_a_line():
    [problem] = problems_of("kind: widget\nstates: [unclosed\n")
    assert problem.startswith("widget.yaml:")
    assert not problem.startswith("widget.yaml:0:")


def test_duplicate_keys_are_an_error():
    [problem] = problems_of(MINIMAL.replace("initial: idle", "initial: idle\ninitial: broken"))
    assert "duplicate key 'initial'" in problem


def test_yaml_on_off_yes_no_stay_strings():
    doc = load_yaml("a: on\nb: off\nc: yes\nd: no\ne: true\nf: 1.10\n")
    assert doc == {"a": "on", "b": "off", "c": "yes", "d": "no", "e": True, "f": 1.1}


def test_kind_defined_twice_in_a_directory(tmp_path):
    (tmp_path / "a.yaml").write_text(MINIMAL)
    (tmp_path / "b.yaml").write_text(MINIMAL)
    with pytest.raises(DefinitionError, match="kind 'widget' is already defined"):
        load_definitions(tmp_path)


def test_transition_vars_are_typed_and_optional_with_a_question_mark():
    definition = parse_definition(MINIMAL.replace(
        "  - {trigger: poke_ok, source: idle, dest: null, by: operation}",
        "  - trigger: poke_ok\n    source: idle\n    dest: null\n    by: operation\n"
        "    vars:\n      version: string\n      ttl: integer?"), "widget.yaml")
    [transition] = definition.transitions
    assert [(v.name, v.type, v.required) for v in transition.vars] == [
        ("version", "string", True), ("ttl", "integer", False)]


def test_bad_vars_name_the_line_and_the_types():
    text = MINIMAL.replace("  - {trigger: poke_ok, source: idle, dest: null, by: operation}",
                           "  - trigger: poke_ok\n    source: idle\n    dest: null\n"
                           "    by: operation\n"
                           "    vars: {version: text, Bad: string}")
    found = problems_of(text)
    assert found[0] == ("widget.yaml:15: transitions[0].vars.version: must be one of string, "
                        "integer, number, boolean (a trailing '?' makes it optional), not 'text'")
    assert found[1].startswith("widget.yaml:15: transitions[0].vars.Bad: must be a name")
    assert problems_of(MINIMAL.replace("by: operation}", "by: operation, vars: [a]}")) == [
        "widget.yaml:11: transitions[0].vars: must be a mapping, not a list"]


def test_every_transition_says_who_may_fire_it():
    text = MINIMAL.replace(", by: operation}", "}")
    assert problems_of(text) == [
        "widget.yaml:11: transitions[0]: missing required key 'by'"]
    assert problems_of(MINIMAL.replace("by: operation}", "by: [operation, root]}")) == [
        "widget.yaml:11: transitions[0].by[1]: must be one of board, operator, admin, "
        "operation, timeout, holder, lease, health, not 'root'"]
    assert problems_of(MINIMAL.replace("by: operation}", "by: []}")) == [
        "widget.yaml:11: transitions[0].by: must not be empty"]


def test_operation_results_come_only_from_workers():
    assert problems_of(MINIMAL.replace("by: operation}", "by: [operation, board]}")) == [
        "widget.yaml:11: transition 'poke_ok' is the result of operation 'poke', which only a "
        "worker reports: it must be by: operation, not operation, board"]


def test_timeout_fires_only_events_a_state_names():
    named = MINIMAL.replace("on_timeout: idle", "on_timeout: poke_ok")
    assert problems_of(named.replace("on_enter: [poke]", "on_enter: []").replace(
        "by: operation}", "by: operator}")) == [
        "widget.yaml:11: state 'idle' times out with event 'poke_ok': its by must include "
        "timeout"]
    assert problems_of(MINIMAL + "  - {trigger: kick, source: idle, dest: broken, "
                                 "by: [operator, timeout]}\n") == [
        "widget.yaml:12: transition 'kick' is by timeout, but no state it leaves names it as "
        "on_timeout"]


def test_shipped_machines_say_who_fires_what():
    board = load_definitions(DEFAULT_STATEMACHINES_DIR)["board"]
    by: dict[str, tuple[str, ...]] = {}
    for t in board.transitions:
        by[t.trigger] = tuple(dict.fromkeys(by.get(t.trigger, ()) + tuple(t.by)))
    assert {e for e, roles in by.items() if "holder" in roles} == {"reboot", "reimage"}
    assert {e for e, roles in by.items() if "lease" in roles} == {
        "lease_hold", "lease_reimage", "lease_unhold", "lease_return", "lease_return_cycle"}
    assert {e for e, roles in by.items() if "board" in roles} == {
        "second_stage_started", "maintenance_requested", "install_ok", "install_failed"}
    assert {e for e, roles in by.items() if "operator" in roles} == {
        "reboot", "reimage", "maintenance", "leave_maintenance", "check"}
    assert by["retire"] == ("admin",)
    assert all(roles == ("operation",) for e, roles in by.items()
               if e.endswith(("_ok", "_failed"))
               and e not in ("install_ok", "install_failed", "check_failed"))
