"""What a definition's schema cannot tell: how its parts fit together.

:mod:`corral.machines.schema` checks each value alone. The checks here need
more than one part: a state that times out needs somewhere to go, a
transition names states that must exist, a counter counts events its state
must accept, a result of an operation may come only from a worker. Each is a
small function yielding ``(line, message)`` for every problem it finds; the
loader adds the file's name.

The cross-reference checks read the neutral values of
:mod:`corral.machines.definition`, built from every state and transition that
is valid on its own, so one bad state does not hide the other problems; a
state that was written but is invalid still counts as a name (its own
problems are reported once, not again as "unknown state").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from corral.machines.definition import TIMEOUT_EVENT, StateDef, TransitionDef
from corral.machines.schema import StateModel

Found = Iterator[tuple[int, str]]


@dataclass(frozen=True, kw_only=True)
class Parts:
    """The parts of one definition that are valid on their own."""

    states: Mapping[str, StateDef]
    names: tuple[str, ...]  # every state written with a valid name, valid or not
    transitions: tuple[TransitionDef, ...]
    initial: str | None = None
    initial_line: int = 0


def expand_sources(sources: tuple[str, ...], states: Mapping[str, StateDef]) -> list[str]:
    """``'*'`` means every non-terminal state; other names stand for themselves."""
    result: list[str] = []
    for source in sources:
        if source == "*":
            result.extend(name for name, s in states.items() if not s.terminal)
        elif source in states:
            result.append(source)
    return list(dict.fromkeys(result))


def state_problems(name: str, state: StateModel, line_of: Callable[[str], int]) -> Found:
    """How one state waits: a terminal state waits for an operator, any other
    state that times out needs both a deadline and where to go."""
    written = state.model_fields_set
    if state.failed and "terminal" in written and not state.terminal:
        yield line_of("terminal"), "a failed state is always terminal"
    if state.deadline_var is not None and "timeout" in written:
        yield line_of("deadline_var"), (f"state {name!r} has both timeout and deadline_var; "
                                        "use one")
    if state.terminal or state.failed:
        for key in ("timeout", "on_timeout", "counter", "deadline_var"):
            if key in written:
                yield line_of(key), (f"terminal state {name!r} cannot have {key!r}: a terminal "
                                     "state waits for an operator")
    else:
        yield from _deadline(name, state, line_of)


def _deadline(name: str, state: StateModel, line_of: Callable[[str], int]) -> Found:
    """A deadline (``timeout`` or ``deadline_var``) and ``on_timeout`` go together."""
    if state.timeout is not None and state.on_timeout is None:
        yield line_of("timeout"), (f"state {name!r} has a timeout but no on_timeout (a state "
                                   "or an event)")
    if state.deadline_var is not None and state.on_timeout is None:
        yield line_of("deadline_var"), f"state {name!r} has a deadline_var but no on_timeout"
    if state.on_timeout is not None and "timeout" not in state.model_fields_set \
            and state.deadline_var is None:
        yield line_of("on_timeout"), (f"state {name!r} has on_timeout but no timeout (seconds) "
                                      "or deadline_var")


def definition_problems(parts: Parts) -> Found:
    """Every problem of how the parts refer to each other (none if no state
    was written)."""
    if not parts.names:
        return
    accepted = _accepted_events(parts)
    yield from _initial(parts)
    yield from _unknown_states(parts)
    yield from _twice_defined(parts)
    yield from _operation_results(parts)
    yield from _timeout_firers(parts)
    yield from _deadline_vars(parts)
    for state in parts.states.values():
        yield from _on_timeout(parts, state, accepted[state.name])
        yield from _counter(parts, state, accepted[state.name])
        yield from _cleared_counters(parts, state)


def _accepted_events(parts: Parts) -> dict[str, set[str]]:
    accepted: dict[str, set[str]] = {name: set() for name in parts.states}
    for t in parts.transitions:
        for source in expand_sources(t.sources, parts.states):
            accepted[source].add(t.trigger)
    return accepted


def _initial(parts: Parts) -> Found:
    if parts.initial is not None and parts.initial not in parts.names:
        yield parts.initial_line, (f"initial state {parts.initial!r} is not a state; states: "
                                   f"{', '.join(parts.names)}")


def _unknown_states(parts: Parts) -> Found:
    names = ", ".join(parts.names)
    for t in parts.transitions:
        for source in t.sources:
            if source != "*" and source not in parts.names:
                yield t.line, (f"transition {t.trigger!r}: unknown source state {source!r}; "
                               f"states: {names}")
        if t.dest is not None and t.dest not in parts.names:
            yield t.line, (f"transition {t.trigger!r}: unknown target state {t.dest!r}; "
                           f"states: {names}")


def _twice_defined(parts: Parts) -> Found:
    seen: dict[tuple[str, str], int] = {}
    for t in parts.transitions:
        for source in expand_sources(t.sources, parts.states):
            key = (source, t.trigger)
            if key in seen:
                yield t.line, (f"trigger {t.trigger!r} from state {source!r} is already "
                               f"defined on line {seen[key]}")
            seen[key] = t.line


def _operation_results(parts: Parts) -> Found:
    """An event named ``<operation>_...`` after an entry operation of a state
    it leaves is that operation's result: only a worker reports it."""
    states = parts.states
    for t in parts.transitions:
        results_of = sorted({op for source in expand_sources(t.sources, states)
                             for op in states[source].on_enter if t.trigger.startswith(f"{op}_")})
        if results_of and t.by != ("operation",):
            yield t.line, (f"transition {t.trigger!r} is the result of operation "
                           f"{results_of[0]!r}, which only a worker reports: it must be "
                           f"by: operation, not {', '.join(t.by)}")


def _timeout_firers(parts: Parts) -> Found:
    """``timeout`` fires exactly the events that a state's ``on_timeout`` names."""
    timeout_events = {(s.name, s.on_timeout) for s in parts.states.values()
                      if s.on_timeout is not None and s.on_timeout not in parts.names}
    for t in parts.transitions:
        named = [s for s in expand_sources(t.sources, parts.states)
                 if (s, t.trigger) in timeout_events]
        if named and "timeout" not in t.by:
            yield t.line, (f"state {named[0]!r} times out with event {t.trigger!r}: its by "
                           "must include timeout")
        if "timeout" in t.by and not named:
            yield t.line, (f"transition {t.trigger!r} is by timeout, but no state it leaves "
                           "names it as on_timeout")


def _deadline_vars(parts: Parts) -> Found:
    for t in parts.transitions:
        target = parts.states.get(t.dest or "")
        if target is not None and target.deadline_var is not None and \
                target.deadline_var not in {v.name for v in t.vars}:
            yield t.line, (f"transition {t.trigger!r} enters {target.name!r}, whose deadline "
                           f"comes from var {target.deadline_var!r}: declare it in vars")


def _on_timeout(parts: Parts, state: StateDef, accepted: set[str]) -> Found:
    on_timeout = state.on_timeout
    if on_timeout is None or on_timeout in parts.names or on_timeout in accepted:
        return
    yield state.line, (f"state {state.name!r}: on_timeout {on_timeout!r} is neither a state "
                       "nor an event this state accepts; events: "
                       f"{', '.join(sorted(accepted)) or 'none'}; states: "
                       f"{', '.join(parts.names)}")


def _counter(parts: Parts, state: StateDef, accepted: set[str]) -> Found:
    counter = state.counter
    if counter is None:
        return
    failure = parts.states.get(counter.failure)
    if counter.failure not in parts.names:
        yield state.line, (f"state {state.name!r}: counter failure state {counter.failure!r} "
                           f"does not exist; states: {', '.join(parts.names)}")
    elif failure is not None and not failure.terminal:
        yield state.line, (f"state {state.name!r}: counter failure state {counter.failure!r} "
                           "must be terminal (a failure waits for an operator)")
    for event in counter.count:
        if event == TIMEOUT_EVENT:
            if state.timeout is None and state.deadline_var is None:
                yield state.line, f"state {state.name!r} counts timeouts but has no timeout"
        elif event not in accepted:
            yield state.line, (f"state {state.name!r}: counter counts event {event!r}, which "
                               "the state does not accept")


def _cleared_counters(parts: Parts, state: StateDef) -> Found:
    if not isinstance(state.clear_counters, tuple):
        return
    known = {s.counter.name for s in parts.states.values() if s.counter}
    for name in state.clear_counters:
        if name not in known:
            yield state.line, (f"state {state.name!r}: clear_counters names unknown counter "
                               f"{name!r}; counters: {', '.join(sorted(known))}")
