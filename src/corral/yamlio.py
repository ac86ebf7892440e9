"""Strict YAML reading shared by every file format Corral accepts.

Two habits of PyYAML's default (YAML 1.1) loader hurt a lab tool: ``on``,
``off``, ``yes`` and ``no`` become booleans (board power states!), and a
document gives no line numbers to point a user at. :func:`load_yaml` returns
plain dicts and lists whose mappings remember the line of every key, and only
``true``/``false`` are booleans.
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


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and line-aware containers."""


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
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _StrictLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


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
        YamlSyntaxError: the text is not a well-formed document.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlSyntaxError(f"{exc.problem or exc.context}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), 0) from None
