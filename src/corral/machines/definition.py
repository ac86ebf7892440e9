"""Neutral, validated descriptions of a state machine.

The loader turns a ``statemachines/*.yaml`` file into these frozen values; the
builder in :mod:`corral.machines.machine` turns them into a ``transitions``
machine. Nothing here knows about databases or I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

TIMEOUT_EVENT = "timeout"
"""The event the deadline sweep fires when a state's timeout expires."""


@dataclass(frozen=True, kw_only=True)
class Counter:
    """A named failure counter attached to a state.

    Each event in ``count`` increments the counter; when the count passes
    ``max`` (that is, on the ``max + 1``-th counted event) the machine goes to
    ``failure`` instead of wherever the event would have taken it.
    """

    name: str
    max: int
    failure: str
    count: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class StateDef:
    name: str
    line: int
    description: str = ""
    timeout: float | None = None
    on_timeout: str | None = None
    counter: Counter | None = None
    terminal: bool = False
    failed: bool = False
    on_enter: tuple[str, ...] = ()
    on_enter_lines: tuple[int, ...] = ()
    clear_counters: bool | tuple[str, ...] = False


@dataclass(frozen=True, kw_only=True)
class TransitionDef:
    """``trigger`` moves a machine from any of ``sources`` to ``dest``.

    ``dest`` ``None`` is an internal transition: the event is accepted and
    recorded, but the machine does not leave or re-enter its state.
    """

    trigger: str
    sources: tuple[str, ...]
    dest: str | None
    line: int


@dataclass(frozen=True, kw_only=True)
class MachineDefinition:
    kind: str
    initial: str
    states: Mapping[str, StateDef]
    transitions: tuple[TransitionDef, ...]
    path: str
    description: str = ""

    @property
    def failed_states(self) -> tuple[str, ...]:
        return tuple(name for name, state in self.states.items() if state.failed)

    @property
    def operation_kinds(self) -> frozenset[str]:
        return frozenset(op for state in self.states.values() for op in state.on_enter)
