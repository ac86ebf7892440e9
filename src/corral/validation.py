"""One way to validate a file a user wrote: a pydantic model, and one adapter
from its errors to ``file:line: path: message``.

Every format Corral reads from a file (the inventory, power settings, boot
resource configuration, state machine definitions) declares its shape as a
:class:`Strict` model: each field with its type, default and check, unknown
keys refused. :func:`validate` runs the model over a document read by
:func:`corral.yamlio.load_yaml` (YAML or JSON) and, when it fails, turns each
pydantic error into a :class:`Problem` at the line the YAML reader recorded,
in the project's own words: "must be a whole number, not 'x'", "unknown key
'colour' (allowed: name, arch, ...)", never a Python type name.

A check a type cannot express (a Redfish address is a URL, one form of a
secret) raises :class:`pydantic_core.PydanticCustomError` with its message
already in those words (use :func:`refuse`); the adapter passes it through.
"""

from __future__ import annotations

import re
import types
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Tag, TypeAdapter, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from corral.yamlio import LineDict, LineList

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One problem of one file, at the line it was written (0: unknown)."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class Strict(BaseModel):
    """A mapping in a file: only its declared keys, no type coercion (``"5"``
    is not a number, ``1`` is not true)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Keys whose value is never repeated in a message (it may be a secret).
    hidden_keys: ClassVar[frozenset[str]] = frozenset()


class Omittable(Strict):
    """A mapping whose keys may be left out, each meaning its default; a key
    that is written needs a value (``arch:`` alone is refused, not read as
    "no arch")."""

    @field_validator("*", mode="before")
    @classmethod
    def _written_means_a_value(cls, value: Any) -> Any:
        if value is None:
            raise refuse("needs a value (it is empty)")
        return value


def refuse(message: str, **context: Any) -> PydanticCustomError:
    """The error a validator raises for a check in the project's own words
    (``{name}`` placeholders are filled from ``context``)."""
    return PydanticCustomError("corral", message, context)


def describe(value: Any) -> str:
    """How a wrong value is shown: its YAML/JSON type, and the value."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        hint = " (quote it to keep it a string)" if isinstance(value, float) else ""
        return f"the number {value!r}{hint}"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def validate(schema: type[T] | Any, doc: Any, path: str, *,
             context: dict[str, Any] | None = None) -> tuple[T | None, list[Problem]]:
    """Validate ``doc`` (as :func:`~corral.yamlio.load_yaml` returned it)
    against ``schema`` (a model or any type pydantic accepts); ``context``
    is what validators read from ``info.context``.

    Returns:
        The validated value and no problems, or None and every problem found,
        each with ``path`` (the file's name) and its line.
    """
    try:
        return TypeAdapter(schema).validate_python(doc, context=context), []
    except ValidationError as exc:
        return None, problems_of(exc, schema, doc, path)


def problems_of(error: ValidationError, schema: Any, doc: Any, path: str, *,
                top_level: str = "") -> list[Problem]:
    """Each error of ``error`` as a :class:`Problem` of the file ``path``;
    ``top_level`` names the document itself in a message about it (a job
    spec says ``(top level): missing required key 'stages'``)."""
    problems = []
    for detail in error.errors(include_url=False):
        loc = detail["loc"]
        if detail["type"].startswith("unknown_"):
            # A discriminated union's tag (``unknown_driver``): the error is
            # the tag's key, which the error type names.
            loc = (*loc, detail["type"].removeprefix("unknown_"))
        spot = _locate(schema, doc, loc)
        where, message = _message(detail, spot)
        where = where or top_level
        text = f"{where}: {message}" if where else message
        problems.append(Problem(path=path, line=spot.line, message=text))
    return sorted(problems, key=lambda p: p.line)


# pydantic's labels for a union's members in an error's location
# ("function-after[_a_url(), str]", "list[str]"): not a key the client wrote.
_MEMBER_LABEL = re.compile(r"^[\w-]+\[.*\]$", re.DOTALL)


def request_problem(detail: Mapping[str, Any], schema: Any = None, doc: Any = None, *,
                    hidden: Collection[str] = ()) -> tuple[list[str | int], str]:
    """(where, the message) for one pydantic error of a request (a body, a
    query parameter, a header), in the words a file's problems use.

    ``detail["loc"]`` starts inside that part of the request, ``schema`` is
    its declared type and ``doc`` what the client sent; ``where`` is that
    location without pydantic's labels of union members. Values of
    ``hidden`` keys are never repeated."""
    loc = [part for part in detail.get("loc", ())
           if not (isinstance(part, str) and _MEMBER_LABEL.match(part))]
    if "type" not in detail:
        return loc, str(detail.get("msg", ""))  # raised by Corral itself, in its words
    if detail["type"] == "missing":
        return loc, "is required"
    spot = _locate(schema, doc, tuple(loc))
    if detail["type"] == "extra_forbidden":
        # ``where`` ends with the key already.
        return loc, f"unknown key (allowed: {_allowed(spot.parent)})"
    return loc, _message({**detail, "loc": tuple(loc)}, spot, secrets=hidden)[1]


@dataclass
class _Spot:
    """Where an error's location leads, in the document and in the schema."""

    line: int
    keys: list[str | int]
    parent: type[BaseModel] | None = None  # the model holding the last key
    leaf: Any = None  # the type expected at the last key
    found: bool = True  # whether the last key is in the document


def _locate(schema: Any, doc: Any, loc: tuple[str | int, ...]) -> _Spot:
    spot = _Spot(line=getattr(doc, "line", 1) or 1, keys=[])
    kind: Any = schema
    for part in loc:
        if part == "[key]":
            # A mapping's key is wrong, not its value: the key's line and path.
            spot.parent, kind = None, None
            break
        kind = _unwrap(kind)
        member = _tagged_member(kind, part)
        if member is not None:
            # A discriminated union's tag is in the location, not in the file.
            kind = member
            continue
        spot.parent = kind if _is_model(kind) else None
        spot.keys.append(part)
        if isinstance(doc, LineDict) and isinstance(part, str) and part in doc:
            spot.line, doc, spot.found = doc.line_of(part), doc[part], True
        elif isinstance(doc, LineList) and isinstance(part, int) and 0 <= part < len(doc):
            spot.line, doc, spot.found = doc.line_of(part), doc[part], True
        else:
            doc, spot.found = None, False
        kind = _child(kind, part)
    spot.leaf = _unwrap(kind)
    return spot


def _unwrap(kind: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` as ``X``."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [m for m in get_args(kind) if m is not type(None)]
            if len(members) == 1:
                kind = members[0]
                continue
        return kind


def _tagged_member(kind: Any, part: str | int) -> Any:
    if get_origin(kind) not in (Union, types.UnionType):
        return None
    for member in get_args(kind):
        if get_origin(member) is Annotated and any(
                isinstance(m, Tag) and m.tag == part for m in member.__metadata__):
            return member
    return None


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _child(kind: Any, part: str | int) -> Any:
    if _is_model(kind):
        for name, field in kind.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    origin, args = get_origin(kind), get_args(kind)
    if origin in (list, tuple, set, frozenset, Sequence) and args:
        return args[0]
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None


def _allowed(model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    return ", ".join(field.alias or name for name, field in model.model_fields.items())


def _message(detail: Any, spot: _Spot, *, secrets: Collection[str] = ()) -> tuple[str, str]:
    """(the path shown, the message) for one pydantic error."""
    kind, value, ctx = detail["type"], detail.get("input"), detail.get("ctx") or {}
    keys = spot.keys
    key = keys[-1] if keys else ""
    where = _path(keys)
    if kind == "missing":
        return _path(keys[:-1]), f"missing required key {key!r}"
    if kind == "extra_forbidden":
        return _path(keys[:-1]), f"unknown key {key!r} (allowed: {_allowed(spot.parent)})"
    if kind.startswith("unknown_"):
        tag = value.get(key) if isinstance(value, Mapping) else value
        return where, f"{detail['msg']}, not {describe(tag)}"
    hidden = key in getattr(spot.parent, "hidden_keys", ()) or key in secrets
    shown = "" if hidden else f", not {describe(value)}"
    if kind in ("model_type", "model_attributes_type") and _is_model(spot.leaf):
        return where, f"must be a mapping with keys {_allowed(spot.leaf)}{shown}"
    if hidden and (kind == "string_type"
                   or (kind == "string_too_short" and ctx.get("min_length") == 1)):
        # The value may be the secret itself: never repeat it.
        return where, "must be a non-empty string"
    if kind in _TYPE_WORDS:
        return where, f"must be {_TYPE_WORDS[kind]}{shown}"
    return where, _constraint_message(kind, detail, ctx, spot, shown)


def _constraint_message(kind: str, detail: Any, ctx: Mapping[str, Any], spot: _Spot,
                        shown: str) -> str:
    """The message for a value of the right type that breaks a constraint
    (a length, a bound, a pattern, a choice), or pydantic's in our words."""
    if kind in ("string_too_short", "too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long{shown}"
    if kind in _BOUND_WORDS:
        words, bound = _BOUND_WORDS[kind]
        number = "a whole number" if spot.leaf is int else "a number"
        limit = ctx.get(bound)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {number} {words} {limit}{shown}"
    if kind == "literal_error":
        return f"must be one of {_choices(spot)}{shown}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", detail["msg"]))
    if kind == "corral":
        return detail["msg"]  # refuse(): already in the project's words
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if len(pattern) > MAX_PATTERN_SHOWN:
            return f"is not of the form the API documents (/openapi.json){shown}"
        return f"must match {pattern}{shown}"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} characters long{shown}"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "json_invalid":
        return f"is not valid JSON ({ctx.get('error', 'unreadable')})"
    if kind == "enum":
        return f"must be one of {ctx.get('expected', 'the allowed values')}{shown}"
    return _own_words(str(detail["msg"]))


# The longest pattern a message quotes (a URL's is a page long).
MAX_PATTERN_SHOWN = 80
# What only Python or pydantic would say: a message holding one is replaced.
_INTERNAL = re.compile(r"class '|<class|typing|pydantic|builtins|_type\b|instance of|"
                       r"dictionary|function-", re.IGNORECASE)


def _own_words(message: str) -> str:
    """pydantic's message for an error no branch above knows, said the way
    the others are ("must be ..."), or a plain refusal when it names Python."""
    for theirs, ours in (("Input should be", "must be"), ("Input should", "must"),
                         ("String should", "must"), ("Value should", "must"),
                         ("List should", "must"), ("Value error, ", "")):
        if message.startswith(theirs):
            message = ours + message[len(theirs):]
            break
    if _INTERNAL.search(message):
        return "is not a valid value here"
    return message


_TYPE_WORDS = {
    "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number",
    "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "dict_type": "a mapping", "list_type": "a list", "tuple_type": "a list",
}
_BOUND_WORDS = {
    "greater_than_equal": ("of at least", "ge"), "greater_than": ("above", "gt"),
    "less_than_equal": ("of at most", "le"), "less_than": ("below", "lt"),
}


def _choices(spot: _Spot) -> str:
    if get_origin(spot.leaf) is Literal:
        return ", ".join(str(choice) for choice in get_args(spot.leaf))
    return "the allowed values"


def _path(keys: Sequence[str | int]) -> str:
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text
