"""The shape of a ``statemachines/*.yaml`` file, as pydantic models.

Each model says which keys a part of a definition has, their types and
defaults, and the checks one value can answer alone (a name's spelling, a
timeout's sign, who may fire a transition). :func:`corral.validation.validate`
runs them and reports each problem at its line. What only the whole definition
can tell (a transition naming an unknown state, a counter that counts an event
its state does not accept) is checked afterwards, by
:mod:`corral.machines.rules`, on the neutral values of
:mod:`corral.machines.definition` that the loader builds from these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainValidator

from corral.machines.definition import FIRERS, TIMEOUT_EVENT, VAR_TYPES
from corral.names import DEFINITION_NAME
from corral.validation import Omittable, Strict, refuse

NAME_RE = DEFINITION_NAME.regex
OPTIONAL_MARK = "?"


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise refuse("must be a name of lowercase letters, digits and '_' starting with a "
                     "letter (at most 63 characters), not {value}", value=repr(value))
    return value


def _trigger(value: Any) -> str:
    if value == TIMEOUT_EVENT:
        raise refuse("'timeout' is fired by the deadline sweep; declare it with a state's "
                     "timeout and on_timeout instead")
    return _name(value)


def _one_or_many(value: Any) -> Any:
    """``on_enter: poll`` means ``on_enter: [poll]``."""
    return [value] if isinstance(value, str) else value


def _var_type(value: Any) -> str:
    base = value.removesuffix(OPTIONAL_MARK) if isinstance(value, str) else value
    if base not in VAR_TYPES:
        raise refuse("must be one of {types} (a trailing '?' makes it optional), not {value}",
                     types=", ".join(VAR_TYPES), value=repr(value))
    return str(value)


def _clear_counters(value: Any) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return tuple(value)
    raise refuse("must be true, false or a list of counter names")


Name = Annotated[str, BeforeValidator(_name)]
"""A state, operation, counter, var or machine kind: it ends up in URLs,
metric labels and database rows, so it is kept plain."""
Trigger = Annotated[str, BeforeValidator(_trigger)]
OneOrMany = BeforeValidator(_one_or_many)
Firer = Literal[FIRERS]  # type: ignore[valid-type]
VarType = Annotated[str, BeforeValidator(_var_type)]
"""``string``, ``integer``, ``number`` or ``boolean``; ``integer?`` when the
event may leave it out."""


class CounterModel(Omittable):
    """A state's failure counter; ``name`` defaults to the state's name and
    ``count`` to the timeout event."""

    name: Name | None = None
    max: int = Field(ge=0)
    failure: str
    count: Annotated[list[str], OneOrMany, Field(min_length=1)] = Field(
        default_factory=lambda: [TIMEOUT_EVENT])


class StateModel(Strict):
    """One state. ``timeout``, ``on_timeout`` and ``deadline_var`` may be
    written as null, meaning they are absent."""

    description: str | None = None
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    on_timeout: str | None = None
    counter: CounterModel | None = None
    terminal: bool = False
    failed: bool = False
    on_enter: Annotated[list[Name], OneOrMany] = Field(default_factory=list)
    clear_counters: Annotated[bool | tuple[str, ...], PlainValidator(_clear_counters)] = False
    clear_vars: bool = False
    deadline_var: Name | None = None


class TransitionModel(Strict):
    """One transition; ``dest`` is required but may be null (the event keeps
    the state), ``by`` says who may fire it."""

    trigger: Trigger
    source: Annotated[list[str], OneOrMany, Field(min_length=1)]
    dest: str | None
    by: Annotated[list[Firer], OneOrMany, Field(min_length=1)]
    vars: dict[Name, VarType] = Field(default_factory=dict, min_length=1)


class DefinitionModel(Strict):
    """A whole definition file; ``transitions`` is required but may be null."""

    kind: Name
    description: str | None = None
    initial: str
    states: dict[Name, StateModel | None] = Field(min_length=1)
    transitions: list[TransitionModel] | None
