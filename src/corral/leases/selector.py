"""Board selectors: ``arch=arm64,rack in (r1,r2),!broken``.

A selector is a comma-separated list of terms, all of which a board must
meet. Keys are a board's inventory labels and its facts (``name``, ``arch``,
``subarch``, ``release``, ``hostname``); a label wins over a fact of the same
name.

====================  ==============================================
``key=value``         the key is present and equal to the value
``key!=value``        the key is absent or another value
``key in (a,b)``      the key is one of the values
``key notin (a,b)``   the key is absent or none of the values
``key``               the key is present (and not false)
``!key``              the key is absent (or false)
====================  ==============================================

Values compare as text (``true``, ``3`` and ``arm64`` alike).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.errors import InvalidRequest

FACTS = ("name", "arch", "subarch", "release", "hostname")
MAX_LENGTH = 1000
_WORD = r"[A-Za-z0-9_.:/-]+"
_TERM = re.compile(
    rf"^\s*(?:(?P<not>!)\s*(?P<absent>{_WORD})"
    rf"|(?P<key>{_WORD})\s*(?:(?P<op>!=|=)\s*(?P<value>{_WORD})"
    rf"|\s+(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$")


@dataclass(frozen=True)
class Term:
    key: str
    op: str  # = != in notin exists absent
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "absent":
            return f"!{self.key}"
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return f"{self.key}{self.op}{self.values[0]}"

    def matches(self, facts: Mapping[str, str]) -> bool:
        value = facts.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "absent":
            return value is None
        if self.op in ("=", "in"):
            return value in self.values
        return value not in self.values


@dataclass(frozen=True)
class Selector:
    terms: tuple[Term, ...]

    def __str__(self) -> str:
        return ",".join(str(t) for t in self.terms)

    def matches(self, facts: Mapping[str, str]) -> bool:
        return all(t.matches(facts) for t in self.terms)

    def first_miss(self, facts: Mapping[str, str]) -> Term | None:
        """The first term ``facts`` do not meet (None: all met)."""
        return next((t for t in self.terms if not t.matches(facts)), None)


def parse(text: str) -> Selector:
    """Raises: InvalidRequest naming the term that does not parse."""
    if not isinstance(text, str) or len(text) > MAX_LENGTH:
        raise InvalidRequest(f"a selector is text of at most {MAX_LENGTH} characters")
    terms = []
    for raw in _split(text):
        match = _TERM.match(raw)
        if raw.strip() == "" or match is None:
            raise InvalidRequest(
                f"selector term {raw.strip()!r} is not one of key=value, key!=value, "
                f"key in (a,b), key notin (a,b), key, !key")
        if match["absent"]:
            terms.append(Term(match["absent"], "absent"))
        elif match["op"]:
            terms.append(Term(match["key"], match["op"], (match["value"],)))
        elif match["set"]:
            values = tuple(v.strip() for v in match["values"].split(","))
            if not values or any(not re.fullmatch(_WORD, v) for v in values):
                raise InvalidRequest(f"selector term {raw.strip()!r}: the values in "
                                     f"parentheses are words separated by commas")
            terms.append(Term(match["key"], match["set"], values))
        else:
            terms.append(Term(match["key"], "exists"))
    return Selector(tuple(terms))


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise InvalidRequest("selector: a ')' without its '('")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise InvalidRequest("selector: a '(' without its ')'")
    parts.append("".join(current))
    return parts


def facts_of(name: str, attrs: Mapping[str, Any]) -> dict[str, str]:
    """What a selector sees of a board: its facts, then its labels over them.
    A label or fact that is false or empty counts as absent."""
    found: dict[str, str] = {"name": name}
    for key in FACTS[1:]:
        value = attrs.get(key)
        if value not in (None, "", False):
            found[key] = _text(value)
    labels = attrs.get("labels")
    if isinstance(labels, Mapping):
        for key, value in labels.items():
            if value in (None, "", False):
                found.pop(str(key), None)
            else:
                found[str(key)] = _text(value)
    return found


def _text(value: Any) -> str:
    if value is True:
        return "true"
    return str(value)
