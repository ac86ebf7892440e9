"""Compute what an event does to a machine, without touching any storage.

One ``transitions.Machine`` is built per definition at start-up, with no model
and ``auto_transitions=False``. For each event a throwaway model carries the
state read from the database row; the shared machine moves it. On top of
``transitions`` this module adds what the Mozpool-style engine needs: timeouts
as events, named failure counters with thresholds, counter clearing, and the
list of entry operations to write to the outbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transitions import Machine, MachineError

from corral.errors import EventNotAllowed, Forbidden, InvalidRequest, NotFound
from corral.machines.definition import (
    FIRERS,
    HUMAN_FIRERS,
    TIMEOUT_EVENT,
    MachineDefinition,
    StateDef,
    TransitionDef,
    VarDef,
)
from corral.machines.loader import expand_sources


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """The result of one accepted event.

    ``entered`` is true when the machine enters ``to_state`` (re-entering the
    same state counts): its epoch increases, its deadline restarts and its entry
    operations run. An internal event (``entered`` false) only adds history.
    """

    from_state: str
    to_state: str
    event: str
    entered: bool
    counters: Mapping[str, int]
    operations: tuple[str, ...]
    timeout: float | None
    counted: str | None = None
    vars: Mapping[str, Any] = field(default_factory=dict)
    clear_vars: bool = False
    # The entered state's deadline is vars[deadline_var] (an ISO timestamp).
    deadline_var: str | None = None

    @property
    def changes_vars(self) -> bool:
        return self.clear_vars or bool(self.vars)


class _Carrier:
    """The lightweight per-event model: it only carries a state name."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


class StateMachine:
    """A validated definition plus its shared ``transitions`` machine."""

    def __init__(self, definition: MachineDefinition) -> None:
        self.definition = definition
        self.kind = definition.kind
        states = definition.states
        spec = []
        for t in definition.transitions:
            for source in expand_sources(t.sources, dict(states)):
                spec.append({"trigger": t.trigger, "source": source, "dest": t.dest})
        for state in states.values():
            if state.on_timeout is None:
                continue
            if state.on_timeout in states:
                dest: str | None = state.on_timeout
            else:
                # on_timeout names an event: a timeout goes where that event goes.
                dest = next(
                    item["dest"] for item in spec
                    if item["source"] == state.name and item["trigger"] == state.on_timeout
                )
            spec.append({"trigger": TIMEOUT_EVENT, "source": state.name, "dest": dest})
        self._machine = Machine(
            model=None,
            states=list(states),
            transitions=spec,
            initial=definition.initial,
            auto_transitions=False,
            send_event=False,
        )
        self._allowed: dict[str, tuple[str, ...]] = {
            name: tuple(sorted(self._machine.get_triggers(name))) for name in states
        }
        self.triggers = frozenset(item["trigger"] for item in spec)
        # (state, event) pairs that keep the state: accepted without re-entering.
        self._internal = frozenset((item["source"], item["trigger"]) for item in spec
                                   if item["dest"] is None)
        self._outcomes: dict[tuple[str, str, tuple[tuple[str, int], ...]], Outcome] = {}
        # (state, event) -> the payload values the event must carry.
        self._vars: dict[tuple[str, str], tuple[VarDef, ...]] = {
            (source, t.trigger): t.vars
            for t in definition.transitions if t.vars
            for source in expand_sources(t.sources, dict(states))
        }
        # (state, event) -> the transition taken, for who may fire it.
        self._transitions: dict[tuple[str, str], TransitionDef] = {
            (source, t.trigger): t
            for t in definition.transitions
            for source in expand_sources(t.sources, dict(states))
        }
        self._by_event: dict[str, list[TransitionDef]] = {}
        for t in definition.transitions:
            self._by_event.setdefault(t.trigger, []).append(t)
        self._force_roles = {name: self._force_role(name) for name in states}

    def _force_role(self, state: str) -> str:
        """Forcing into a state takes the role that its transitions need: admin
        if every transition an operator or admin may fire into it is admin-only
        (a board's ``retired``), otherwise operator."""
        human = {role for t in self.definition.transitions if t.dest == state
                 for role in t.by if role in HUMAN_FIRERS}
        return "admin" if human == {"admin"} else "operator"

    @property
    def initial(self) -> str:
        return self.definition.initial

    def state(self, name: str) -> StateDef:
        try:
            return self.definition.states[name]
        except KeyError:
            raise NotFound(
                f"{self.kind} has no state {name!r}; states: {', '.join(self.definition.states)}"
            ) from None

    def allowed_events(self, state: str, role: str | None = None) -> tuple[str, ...]:
        """Events a machine in ``state`` accepts; with ``role``, only those that
        role may fire there.

        ``timeout`` is left out: only the deadline sweep fires it.
        """
        events = (e for e in self._allowed.get(state, ()) if e != TIMEOUT_EVENT)
        if role is None:
            return tuple(events)
        return tuple(e for e in events if self._transitions[(state, e)].fired_by(role))

    def firers(self, state: str, event: str) -> tuple[str, ...]:
        """Who may fire ``event`` in ``state`` (empty if the state does not accept it)."""
        transition = self._transitions.get((state, event))
        return transition.by if transition is not None else ()

    def force_role(self, state: str) -> str:
        """The role needed to force a machine into ``state`` (operator or admin).

        Raises:
            NotFound: no such state.
        """
        self.state(state)
        return self._force_roles[state]

    def check_firer(self, event: str, role: str, state: str | None = None) -> None:
        """Refuse ``event`` from ``role``: anywhere, if no transition of the
        event names the role; with ``state``, if the transition taken from that
        state does not. A state that does not accept the event is left to
        :meth:`compute`.

        Raises:
            Forbidden: naming who may fire it.
        """
        if state is not None:
            transition = self._transitions.get((state, event))
            candidates = [transition] if transition is not None else []
        else:
            candidates = self._by_event.get(event, [])
        if not candidates or any(t.fired_by(role) for t in candidates):
            return
        by = {r for t in candidates for r in t.by}
        if role in HUMAN_FIRERS and by.isdisjoint(HUMAN_FIRERS) and self.kind in FORCED_BY_HAND:
            # A person asked for what only a machine reports: say who does,
            # and what a person does instead (not "not by an admin", which
            # an operator at the CLI did not know they were).
            when = f"in state {state!r}, " if state is not None else ""
            raise Forbidden(f"{when}{event} is {_fired_by(by)}; operators can force a state "
                            f"with `corral {self.kind} force-state`", role=role)
        where = f" in state {state!r}" if state is not None else ""
        raise Forbidden(f"{self.kind} event {event!r}{where} is {_fired_by(by)}, "
                        f"not by {_as_firer(role)}", role=role)

    def is_failed(self, state: str) -> bool:
        s = self.definition.states.get(state)
        return bool(s and s.failed)

    def _take_vars(self, state: str, event: str, payload: Any, name: str) -> dict[str, Any]:
        wanted = self._vars.get((state, event))
        if not wanted:
            return {}
        if not isinstance(payload, Mapping):
            payload = {}
        problems = []
        taken = {}
        for var in wanted:
            if var.name not in payload:
                if var.required:
                    problems.append(f"{var.name} ({var.type}) is required")
                continue
            value = payload[var.name]
            if not var.accepts(value):
                problems.append(f"{var.name} must be of type {var.type}, not {value!r}")
                continue
            taken[var.name] = value
        if problems:
            raise InvalidRequest(f"event {event!r} for {self.kind} {name!r}: payload: "
                                 + "; ".join(problems))
        return taken

    def compute(
        self, state: str, counters: Mapping[str, int], event: str, *, name: str = "?",
        payload: Any = None, role: str | None = None,
    ) -> Outcome:
        """Apply ``event`` to a machine in ``state`` with ``counters``, fired by
        ``role`` (one of :data:`~corral.machines.definition.FIRERS`; ``None``
        skips the check, for the deadline sweep's own timeouts).

        Raises:
            Forbidden: ``role`` may not fire the event (anywhere, or from ``state``).
            EventNotAllowed: the state does not accept the event; names the
                events it accepts that ``role`` may fire.
            InvalidRequest: the event's payload lacks a value its transition declares.
        """
        if role is not None:
            self.check_firer(event, role)
        if event not in self._allowed.get(state, ()):
            raise EventNotAllowed(self.kind, name, state, event,
                                  list(self.allowed_events(state, role)))
        if role is not None:
            self.check_firer(event, role, state)
        if (state, event) in self._vars:
            return self._compute(state, counters, event, payload, name)
        # Without vars an outcome depends only on the state, the event and the
        # counters: the deadline sweep computes the same few outcomes over and
        # over, so they are kept (never mutate an outcome's counters).
        key = (state, event, tuple(sorted(counters.items())) if counters else ())
        outcome = self._outcomes.get(key)
        if outcome is None:
            if len(self._outcomes) >= 4096:
                self._outcomes.clear()
            outcome = self._outcomes[key] = self._compute(state, counters, event, None, name)
        return outcome

    def _compute(
        self, state: str, counters: Mapping[str, int], event: str, payload: Any, name: str
    ) -> Outcome:
        variables = self._take_vars(state, event, payload, name)
        carrier = _Carrier(state)
        try:
            self._machine.events[event].trigger(carrier)
        except MachineError:  # pragma: no cover - guarded by _allowed above
            raise EventNotAllowed(
                self.kind, name, state, event, list(self.allowed_events(state))
            ) from None
        source = self.definition.states[state]
        to_state = carrier.state
        entered = (state, event) not in self._internal
        new_counters = dict(counters)
        counted = None
        counter = source.counter
        if counter is not None and event in counter.count:
            counted = counter.name
            new_counters[counter.name] = new_counters.get(counter.name, 0) + 1
            if new_counters[counter.name] > counter.max:
                to_state = counter.failure
                entered = True
        if entered:
            return self.enter(state, to_state, event, new_counters, counted=counted,
                              variables=variables)
        return Outcome(
            from_state=state,
            to_state=state,
            event=event,
            entered=False,
            counters=new_counters,
            operations=(),
            timeout=None,
            counted=counted,
            vars=variables,
        )

    def enter(
        self,
        from_state: str,
        to_state: str,
        event: str,
        counters: Mapping[str, int],
        *,
        counted: str | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """The outcome of entering ``to_state``, for an event or an operator's force."""
        target = self.state(to_state)
        new_counters = dict(counters)
        if target.clear_counters is True:
            new_counters = {}
        elif target.clear_counters:
            for name in target.clear_counters:
                new_counters.pop(name, None)
        return Outcome(
            from_state=from_state,
            to_state=to_state,
            event=event,
            entered=True,
            counters=new_counters,
            operations=target.on_enter,
            timeout=target.timeout,
            counted=counted,
            vars=dict(variables or {}),
            clear_vars=target.clear_vars,
            deadline_var=target.deadline_var,
        )


# The kinds a person moves by hand with `corral KIND force-state` (and the
# force-state route); a lease is moved only by its service and its holder.
FORCED_BY_HAND = frozenset({"board", "pool", "job"})

# How a refusal says who fires an event, per firer a transition's `by:` names.
_FIRED_BY = {"board": ("reported", "the board itself"),
             "operator": ("fired", "an operator"), "admin": ("fired", "an admin"),
             "operation": ("reported", "the worker that ran its operation"),
             "timeout": ("fired", "the deadline sweep"),
             "holder": ("fired", "a lease's holder"), "lease": ("fired", "the lease service"),
             "health": ("fired", "the health pass")}


def _fired_by(by: set[str]) -> str:
    """``by`` (a transition's firers) as a person would say it: "reported by
    the board itself", "fired by an operator or a lease's holder"."""
    order = {role: i for i, role in enumerate(FIRERS)}
    said: dict[str, list[str]] = {}
    for role in sorted(by, key=lambda r: (order.get(r, len(order)), r)):
        verb, who = _FIRED_BY.get(role, ("fired", role))
        said.setdefault(verb, []).append(who)
    return " or ".join(f"{verb} by {' or '.join(whos)}" for verb, whos in said.items())


def _as_firer(role: str) -> str:
    """The role refused, as the end of "..., not by ..."."""
    return {"board": "a board's own token", "operator": "an operator",
            "admin": "an admin", "operation": "an operation's result",
            "timeout": "the deadline sweep", "holder": "a lease's holder",
            "lease": "the lease service", "health": "the health pass", "viewer": "a viewer",
            "user": "a user"}.get(role, role)


class MachineSet:
    """Every machine kind the engine runs, keyed by kind."""

    def __init__(self, definitions: Mapping[str, MachineDefinition]) -> None:
        self._machines = {kind: StateMachine(d) for kind, d in definitions.items()}

    def __getitem__(self, kind: str) -> StateMachine:
        try:
            return self._machines[kind]
        except KeyError:
            raise NotFound(
                f"no state machine of kind {kind!r}; kinds: {', '.join(self._machines)}"
            ) from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._machines

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._machines.values())

    def kinds(self) -> list[str]:
        return list(self._machines)
