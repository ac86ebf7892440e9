"""Neutral, validated descriptions of a state machine.

The loader turns a ``statemachines/*.yaml`` file into these frozen values; the
builder in :mod:`corral.machines.machine` turns them into a ``transitions``
machine. Nothing here knows about databases or I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from corral import names

TIMEOUT_EVENT = "timeout"
"""The event the deadline sweep fires when a state's timeout expires."""

FIRERS: tuple[str, ...] = tuple(role.value for role in names.FIRERS)
"""Who may fire a transition (its ``by:``):

- ``board``: the board itself, with its own token (its second stage's progress);
- ``operator``: an operator or admin token, or the local CLI;
- ``admin``: an admin token, or the local CLI (an operator token is refused);
- ``operation``: a worker reporting an operation's result, or a service's own
  bookkeeping (a job's action finishing);
- ``timeout``: the deadline sweep, for a state whose ``on_timeout`` names this
  event.
"""

HUMAN_FIRERS: tuple[str, ...] = tuple(role.value for role in names.HUMAN_FIRERS)


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
    clear_vars: bool = False
    # Instead of a fixed timeout: the var holding the deadline (an ISO 8601
    # UTC timestamp) that the event entering the state carries.
    deadline_var: str | None = None


VAR_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


@dataclass(frozen=True, kw_only=True)
class VarDef:
    """A value an event's payload must carry, kept in the machine's ``vars``.

    Operations of the states the machine enters later read it (a pool's
    override version, say), so it survives re-entries and timeouts.
    """

    name: str
    type: str
    required: bool = True

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) and self.type != "boolean":
            return False
        return isinstance(value, VAR_TYPES[self.type])


@dataclass(frozen=True, kw_only=True)
class TransitionDef:
    """``trigger`` moves a machine from any of ``sources`` to ``dest``.

    ``dest`` ``None`` is an internal transition: the event is accepted and
    recorded, but the machine does not leave or re-enter its state. ``vars``
    are payload values the event must carry; they are stored on the machine.
    ``by`` says who may fire it (see :data:`FIRERS`).
    """

    trigger: str
    sources: tuple[str, ...]
    dest: str | None
    line: int
    by: tuple[str, ...]
    vars: tuple[VarDef, ...] = ()

    def fired_by(self, role: str) -> bool:
        """Whether ``role`` (one of :data:`FIRERS`) may fire this transition; an
        admin may fire what an operator may."""
        return role in self.by or (role == "admin" and "operator" in self.by)


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
