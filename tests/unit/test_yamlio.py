"""The YAML reader every file format shares: a hostile document (nested
thousands deep, or aliases that multiply) is a syntax error with a line, in
job specs, inventories and state machine definitions alike."""

from __future__ import annotations

import time

import pytest

from corral import yamlio
from corral.inventory import InventoryError, load_inventory
from corral.machines.loader import DefinitionError, parse_definition
from corral.yamlio import MAX_ALIAS_NODES, MAX_DEPTH, YamlSyntaxError, load_yaml


def deep(levels: int) -> str:
    return "boards: " + "[" * levels + "]" * levels + "\n"


def alias_bomb(levels: int) -> str:
    """Each level refers nine times to the one before: 9**levels nodes from a few
    hundred bytes."""
    lines = ["boards:", "  - name: b1", "    labels:", "      x0: &x0 [a, a, a, a, a, a, a, a, a]"]
    lines += [f"      x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]"
              for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [deep(3000), "a: " + "{b: " * 3000 + "1" + "}" * 3000,
                                  "x:\n  " + "- " * 3000 + "a\n"],
                         ids=["flow-lists", "flow-mappings", "block-lists"])
def test_deep_nesting_is_a_syntax_error_with_its_line(text):
    with pytest.raises(YamlSyntaxError, match=f"nested more than {MAX_DEPTH} levels deep"
                       ) as info:
        load_yaml(text)
    assert info.value.line >= 1


def test_running_out_of_stack_is_a_syntax_error_too(monkeypatch):
    # Called with a deep stack of its own, the reader may give up before
    # MAX_DEPTH; it still says why instead of raising RecursionError.
    monkeypatch.setattr(yamlio, "MAX_DEPTH", 10**6)
    with pytest.raises(YamlSyntaxError, match="nested too deeply to read"):
        load_yaml(deep(5000))


def test_nesting_up_to_the_limit_loads():
    doc = load_yaml("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")
    assert isinstance(doc["a"], list)


def test_multiplying_aliases_are_refused_quickly_at_their_line():
    started = time.monotonic()
    with pytest.raises(YamlSyntaxError, match=f"aliases expand to more than {MAX_ALIAS_NODES} "
                       "nodes") as info:
        load_yaml(alias_bomb(9))
    assert time.monotonic() - started < 1
    assert info.value.line in range(5, 15)


def test_a_few_aliases_still_load():
    # State machine files share a counter between states this way.
    doc = load_yaml("counters:\n  shared: &c {name: power_cycle, max: 3}\n"
                    "a: {counter: *c}\nb: {counter: *c}\n"
                    "merged: {<<: *c, max: 5}\n")
    assert doc["a"]["counter"] == doc["b"]["counter"] == {"name": "power_cycle", "max": 3}
    assert doc["merged"] == {"name": "power_cycle", "max": 5}


def test_inventory_reports_deep_nesting_and_aliases_with_the_line(tmp_path):
    for text, message in ((deep(3000), "nested more than"),
                          (alias_bomb(9), "aliases expand to more than")):
        path = tmp_path / "lab.yaml"
        path.write_text(text)
        with pytest.raises(InventoryError) as info:
            load_inventory(path)
        [problem] = info.value.problems
        assert message in problem.message
        assert problem.line >= 1


def test_state_machine_file_reports_deep_nesting_with_the_line():
    with pytest.raises(DefinitionError) as info:
        parse_definition("kind: board\n" + deep(3000), "statemachines/deep.yaml")
    [problem] = info.value.problems
    assert f"nested more than {MAX_DEPTH} levels deep" in problem.message


def test_a_control_character_is_a_syntax_error_with_its_line():
    with pytest.raises(YamlSyntaxError) as info:
        load_yaml("a: 1\nb: x\x11y\n")
    assert info.value.line == 2
    assert "#x0011 is not allowed" in str(info.value)
