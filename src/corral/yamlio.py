"""Strict YAML reading shared by every file format Corral accepts.

Two habits of PyYAML's default (YAML 1.1) loader hurt a lab tool: ``on``,
``off``, ``yes`` and ``no`` become booleans (board power states!), and a
document gives no line numbers to point a user at. :func:`load_yaml` returns
plain dicts and lists whose mappings remember the line of every key, and only
``true``/``false`` are booleans.

Two more hurt a server, in any YAML reader: a document nested thousands deep
exhausts the interpreter's stack, and aliases that refer to aliases multiply (a
few hundred bytes, each level nine references to the one before, stand for
millions of nodes once a caller walks or stores the result). So every format
alike has a depth limit and a bound on what aliases may add, each reported as
a syntax error at its line. Aliases themselves stay allowed: state machine
definitions share a counter between states with an anchor.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class LineDict(dict[str, Any]):
    """A mapping read from YAML that remembers where each key was written."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list[Any]):
    """A sequence read from YAML that remembers where each item was written."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return self.line


MAX_DEPTH = 100
"""Containers inside containers. Corral's files need a few levels (a job spec
six or seven, and its payload check allows 32); reading costs about three
stack frames a level, so this stays well inside Python's recursion limit
(1000) wherever the reader is called from."""

MAX_ALIAS_NODES = 10_000
"""Nodes that aliases may add, counting each alias as the whole node it repeats.
A shared counter or a repeated block is a few dozen nodes; this allows hundreds
of such uses, and keeps any document within ten thousand nodes of what its own
text holds (a 500-byte document with seven levels of nine-fold aliases stood
for more than five million)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, line-aware containers, a depth limit
    and a bound on what aliases add."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliased = 0
        # Each node composed so far, with its size once aliases are expanded.
        self._sizes: dict[yaml.Node, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            assert node is not None
            # A node still being composed (an alias inside its own anchor)
            # is not yet counted; the constructor refuses it anyway.
            self._aliased += self._sizes.get(node, 1)
            if self._aliased > MAX_ALIAS_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand to more than {MAX_ALIAS_NODES} nodes", mark)
            return node
        container = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if container:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        node = super().compose_node(parent, index)
        assert node is not None
        if container:
            self._depth -= 1
        size = 1
        for child in _children(node):
            size += self._sizes.get(child, 1)
        self._sizes[node] = size
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


# Drop the YAML 1.1 boolean resolver (yes/no/on/off) and install one that
# accepts only true/false, as YAML 1.2 does.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> LineDict:
    own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    # Merged keys (``<<: *base``) come first; the mapping's own keys override them.
    loader.flatten_mapping(node)
    merged = len(node.value) - own
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    own_keys: set[str] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if index >= merged:
            if key in own_keys:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            own_keys.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _StrictLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_MERGE_TAG = "tag:yaml.org,2002:merge"
_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


class YamlSyntaxError(ValueError):
    """The text is not well-formed YAML; ``line`` is 1-based."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def load_yaml(text: str) -> Any:
    """Parse one YAML (or JSON) document strictly.

    Raises:
        YamlSyntaxError: the text is not a well-formed document, is nested more
            than :data:`MAX_DEPTH` deep, or its aliases add more than
            :data:`MAX_ALIAS_NODES` nodes.
    """
    try:
        # The reader checks every character as it is built: a control
        # character is a ReaderError here, before any parsing.
        loader = _StrictLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(text, str) else 0
        raise YamlSyntaxError(f"character #x{exc.character:04x} is not allowed in YAML "
                              f"({exc.reason})", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc).replace("\n", " "), 0) from None
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlSyntaxError(f"{exc.problem or exc.context}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), 0) from None
    except RecursionError:
        # MAX_DEPTH keeps this from happening unless the caller's own stack
        # is already deep.
        raise YamlSyntaxError("nested too deeply to read", loader.line + 1) from None
    finally:
        loader.dispose()
