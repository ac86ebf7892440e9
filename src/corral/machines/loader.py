"""Read and validate ``statemachines/*.yaml`` definitions.

A definition is input like any other: every problem is reported at once, each
naming the file, the line and what is allowed, and a malformed file stops
start-up before anything touches the database. See ``docs/state-machines.md``
for the format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from corral.errors import CorralError
from corral.machines.definition import (
    FIRERS,
    TIMEOUT_EVENT,
    VAR_TYPES,
    Counter,
    MachineDefinition,
    StateDef,
    TransitionDef,
    VarDef,
)
from corral.names import DEFINITION_NAME
from corral.validation import Problem
from corral.yamlio import LineDict, LineList, YamlSyntaxError, load_yaml

TOP_KEYS = ("kind", "description", "initial", "states", "transitions")
STATE_KEYS = (
    "description",
    "timeout",
    "on_timeout",
    "counter",
    "terminal",
    "failed",
    "on_enter",
    "clear_counters",
    "clear_vars",
    "deadline_var",
)
COUNTER_KEYS = ("name", "max", "failure", "count")
TRANSITION_KEYS = ("trigger", "source", "dest", "by", "vars")
REQUIRED_TRANSITION_KEYS = ("trigger", "source", "dest", "by")
NAME_RE = DEFINITION_NAME.regex


class DefinitionError(CorralError):
    """One or more problems in a state machine definition file."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class _Checker:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []

    def error(self, line: int, message: str) -> None:
        self.problems.append(Problem(path=self.path, line=line, message=message))

    def unknown_keys(self, mapping: LineDict, allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.error(
                    mapping.line_of(key),
                    f"unknown key {key!r} in {where}; allowed keys: {', '.join(allowed)}",
                )

    def name(self, value: Any, line: int, what: str) -> str | None:
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.error(
                line,
                f"{what} must be a name of lowercase letters, digits and '_' starting "
                f"with a letter (at most 63 characters), not {value!r}",
            )
            return None
        return value


def load_definition(path: Path) -> MachineDefinition:
    """Load and validate one definition file.

    Raises:
        DefinitionError: listing every problem found, each with file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(
            [Problem(path=str(path), line=0, message=f"cannot read: {exc.strerror}")]
        ) from None
    return parse_definition(text, str(path))


def parse_definition(text: str, path: str) -> MachineDefinition:
    """Validate a definition given as text; ``path`` names it in errors."""
    check = _Checker(path)
    try:
        doc = load_yaml(text)
    except YamlSyntaxError as exc:
        raise DefinitionError([Problem(path=path, line=exc.line, message=str(exc))]) from None
    if not isinstance(doc, LineDict):
        raise DefinitionError(
            [Problem(path=path, line=1, message="a definition must be a mapping with keys: "
                     + ", ".join(TOP_KEYS))]
        )
    check.unknown_keys(doc, TOP_KEYS, "the definition")
    for key in ("kind", "initial", "states", "transitions"):
        if key not in doc:
            check.error(doc.line, f"missing required key {key!r}")

    kind = check.name(doc.get("kind"), doc.line_of("kind"), "kind") if "kind" in doc else None
    description = doc.get("description", "")
    if not isinstance(description, str):
        check.error(doc.line_of("description"), "description must be a string")
        description = ""

    raw_states = doc.get("states")
    states: dict[str, StateDef] = {}
    if "states" in doc and not (isinstance(raw_states, LineDict) and raw_states):
        check.error(doc.line_of("states"), "states must be a non-empty mapping of name to state")
    elif isinstance(raw_states, LineDict):
        for state_name, body in raw_states.items():
            line = raw_states.line_of(state_name)
            if check.name(state_name, line, "a state name") is None:
                continue
            state = _parse_state(check, state_name, body, line)
            if state is not None:
                states[state_name] = state

    transitions = _parse_transitions(check, doc)

    initial = doc.get("initial")
    if "initial" in doc and initial not in states and isinstance(raw_states, LineDict):
        check.error(
            doc.line_of("initial"),
            f"initial state {initial!r} is not a state; states: {', '.join(states)}",
        )

    if isinstance(raw_states, LineDict) and states:
        _check_references(check, states, transitions)

    if check.problems:
        raise DefinitionError(check.problems)
    assert kind is not None
    assert isinstance(initial, str)
    return MachineDefinition(
        kind=kind,
        initial=initial,
        states=states,
        transitions=tuple(transitions),
        path=path,
        description=description,
    )


def _parse_state(check: _Checker, name: str, body: Any, line: int) -> StateDef | None:
    if body is None:
        body = LineDict()
        body.line = line
        body.key_lines = {}
    if not isinstance(body, LineDict):
        check.error(line, f"state {name!r} must be a mapping; allowed keys: "
                    f"{', '.join(STATE_KEYS)}")
        return None
    check.unknown_keys(body, STATE_KEYS, f"state {name!r}")

    timeout = body.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        check.error(body.line_of("timeout"), f"timeout must be a positive number of seconds, "
                    f"not {timeout!r}")
        timeout = None

    on_timeout = body.get("on_timeout")
    if on_timeout is not None and not isinstance(on_timeout, str):
        check.error(body.line_of("on_timeout"), "on_timeout must name a state or an event")
        on_timeout = None

    flags: dict[str, bool] = {}
    for flag in ("terminal", "failed", "clear_vars"):
        value = body.get(flag, False)
        if not isinstance(value, bool):
            check.error(body.line_of(flag), f"{flag} must be true or false, not {value!r}")
            value = False
        flags[flag] = value
    if flags["failed"] and "terminal" in body and not flags["terminal"]:
        check.error(body.line_of("terminal"), "a failed state is always terminal")
    terminal = flags["terminal"] or flags["failed"]

    on_enter: list[str] = []
    on_enter_lines: list[int] = []
    raw_ops = body.get("on_enter", [])
    if isinstance(raw_ops, str):
        raw_ops = [raw_ops]
    if not isinstance(raw_ops, list):
        check.error(body.line_of("on_enter"), "on_enter must be a list of operation names")
    else:
        for index, op in enumerate(raw_ops):
            op_line = raw_ops.line_of(index) if isinstance(raw_ops, LineList) else body.line_of(
                "on_enter")
            if check.name(op, op_line, "an operation name") is not None:
                on_enter.append(op)
                on_enter_lines.append(op_line)

    clear: bool | tuple[str, ...] = False
    raw_clear = body.get("clear_counters", False)
    if isinstance(raw_clear, bool):
        clear = raw_clear
    elif isinstance(raw_clear, list) and all(isinstance(c, str) for c in raw_clear):
        clear = tuple(raw_clear)
    else:
        check.error(body.line_of("clear_counters"),
                    "clear_counters must be true, false or a list of counter names")

    counter = None
    if "counter" in body:
        counter = _parse_counter(check, name, body["counter"], body.line_of("counter"))

    deadline_var = body.get("deadline_var")
    if deadline_var is not None:
        if check.name(deadline_var, body.line_of("deadline_var"), "deadline_var") is None:
            deadline_var = None
        elif "timeout" in body:
            check.error(body.line_of("deadline_var"), f"state {name!r} has both timeout and "
                        "deadline_var; use one")
    if terminal:
        for key in ("timeout", "on_timeout", "counter", "deadline_var"):
            if key in body:
                check.error(body.line_of(key), f"terminal state {name!r} cannot have {key!r}: "
                            "a terminal state waits for an operator")
    else:
        if timeout is not None and on_timeout is None:
            check.error(body.line_of("timeout"),
                        f"state {name!r} has a timeout but no on_timeout (a state or an event)")
        if deadline_var is not None and on_timeout is None:
            check.error(body.line_of("deadline_var"),
                        f"state {name!r} has a deadline_var but no on_timeout")
        if on_timeout is not None and "timeout" not in body and deadline_var is None:
            check.error(body.line_of("on_timeout"),
                        f"state {name!r} has on_timeout but no timeout (seconds) or "
                        "deadline_var")

    return StateDef(
        name=name,
        line=line,
        description=body.get("description", "") if isinstance(body.get("description", ""), str)
        else "",
        timeout=float(timeout) if timeout is not None else None,
        on_timeout=on_timeout,
        counter=counter,
        terminal=terminal,
        failed=flags["failed"],
        on_enter=tuple(on_enter),
        on_enter_lines=tuple(on_enter_lines),
        clear_counters=clear,
        clear_vars=flags["clear_vars"],
        deadline_var=deadline_var,
    )


def _parse_counter(check: _Checker, state: str, body: Any, line: int) -> Counter | None:
    if not isinstance(body, LineDict):
        check.error(line, f"counter of state {state!r} must be a mapping; allowed keys: "
                    + ", ".join(COUNTER_KEYS))
        return None
    check.unknown_keys(body, COUNTER_KEYS, f"the counter of state {state!r}")
    ok = True
    name = body.get("name", state)
    if check.name(name, body.line_of("name"), "a counter name") is None:
        ok = False
    maximum = body.get("max")
    if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 0:
        check.error(body.line_of("max") if "max" in body else line,
                    f"counter of state {state!r} needs max: a whole number >= 0"
                    + (f", not {maximum!r}" if "max" in body else ""))
        ok = False
    failure = body.get("failure")
    if not isinstance(failure, str):
        check.error(body.line_of("failure") if "failure" in body else line,
                    f"counter of state {state!r} needs failure: the state to go to when the "
                    "count passes max")
        ok = False
    count = body.get("count", [TIMEOUT_EVENT])
    if isinstance(count, str):
        count = [count]
    if not isinstance(count, list) or not count or not all(isinstance(c, str) for c in count):
        check.error(body.line_of("count"), "count must be a non-empty list of event names")
        ok = False
    if not ok or not isinstance(maximum, int) or not isinstance(failure, str):
        return None
    return Counter(name=name, max=maximum, failure=failure, count=tuple(count))


def _parse_transitions(check: _Checker, doc: LineDict) -> list[TransitionDef]:
    raw = doc.get("transitions", [])
    if raw is None:
        return []
    if not isinstance(raw, LineList):
        check.error(doc.line_of("transitions"), "transitions must be a list of "
                    "{trigger, source, dest} mappings")
        return []
    result = []
    for index, item in enumerate(raw):
        line = raw.line_of(index)
        if not isinstance(item, LineDict):
            check.error(line, "a transition must be a mapping with keys: "
                        + ", ".join(TRANSITION_KEYS))
            continue
        check.unknown_keys(item, TRANSITION_KEYS, "a transition")
        missing = [k for k in REQUIRED_TRANSITION_KEYS if k not in item]
        if missing:
            check.error(line, f"transition is missing {', '.join(missing)} "
                        "(dest may be null for an event that keeps the state; by says who "
                        f"may fire it: some of {', '.join(FIRERS)})")
            continue
        trigger = check.name(item["trigger"], item.line_of("trigger"), "a trigger")
        source = item["source"]
        if isinstance(source, str):
            sources: tuple[str, ...] = (source,)
        elif isinstance(source, list) and source and all(isinstance(s, str) for s in source):
            sources = tuple(source)
        else:
            check.error(item.line_of("source"), "source must be a state, a list of states or '*'")
            continue
        dest = item["dest"]
        if dest is not None and not isinstance(dest, str):
            check.error(item.line_of("dest"), "dest must be a state or null")
            continue
        if trigger == TIMEOUT_EVENT:
            check.error(item.line_of("trigger"), "'timeout' is fired by the deadline sweep; "
                        "declare it with a state's timeout and on_timeout instead")
            continue
        by = _parse_by(check, item)
        variables = _parse_vars(check, item) if "vars" in item else ()
        if trigger is not None and by is not None:
            result.append(TransitionDef(trigger=trigger, sources=sources, dest=dest, line=line,
                                        by=by, vars=variables))
    return result


def _parse_by(check: _Checker, item: LineDict) -> tuple[str, ...] | None:
    """``by: board`` or ``by: [operator, operation]``: who may fire the transition."""
    raw = item["by"]
    line = item.line_of("by")
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        check.error(line, f"by must name who may fire the transition: one or a list of "
                    f"{', '.join(FIRERS)}, not {raw!r}")
        return None
    unknown = [n for n in names if n not in FIRERS]
    if unknown:
        check.error(line, f"by names {', '.join(map(repr, unknown))}; who may fire a "
                    f"transition: {', '.join(FIRERS)}")
        return None
    return tuple(dict.fromkeys(names))


def _parse_vars(check: _Checker, item: LineDict) -> tuple[VarDef, ...]:
    """``vars: {os_version: string, ttl_seconds: integer?}``: a trailing ``?``
    makes a value optional."""
    raw = item["vars"]
    line = item.line_of("vars")
    types = ", ".join(VAR_TYPES)
    if not isinstance(raw, LineDict) or not raw:
        check.error(line, "vars must be a mapping of payload key to type "
                    f"({types}; a trailing '?' makes it optional)")
        return ()
    result = []
    for name, spec in raw.items():
        key_line = raw.line_of(name)
        if check.name(name, key_line, "a var name") is None:
            continue
        base = spec[:-1] if isinstance(spec, str) and spec.endswith("?") else spec
        if base not in VAR_TYPES:
            check.error(key_line, f"var {name!r} has type {spec!r}; types: {types} "
                        "(a trailing '?' makes it optional)")
            continue
        result.append(VarDef(name=name, type=base, required=base == spec))
    return tuple(result)


def _check_references(
    check: _Checker, states: dict[str, StateDef], transitions: list[TransitionDef]
) -> None:
    names = ", ".join(states)
    triggers_by_state: dict[str, set[str]] = {s: set() for s in states}
    seen: dict[tuple[str, str], int] = {}
    for t in transitions:
        for source in t.sources:
            if source != "*" and source not in states:
                check.error(t.line, f"transition {t.trigger!r}: unknown source state {source!r}; "
                            f"states: {names}")
        if t.dest is not None and t.dest not in states:
            check.error(t.line, f"transition {t.trigger!r}: unknown target state {t.dest!r}; "
                        f"states: {names}")
        for source in expand_sources(t.sources, states):
            key = (source, t.trigger)
            if key in seen:
                check.error(t.line, f"trigger {t.trigger!r} from state {source!r} is already "
                            f"defined on line {seen[key]}")
            seen[key] = t.line
            triggers_by_state[source].add(t.trigger)

    _check_firers(check, states, transitions)
    for t in transitions:
        target = states.get(t.dest or "")
        if target is not None and target.deadline_var is not None and target.deadline_var \
                not in {v.name for v in t.vars}:
            check.error(t.line, f"transition {t.trigger!r} enters {target.name!r}, whose "
                        f"deadline comes from var {target.deadline_var!r}: declare it in vars")
    for state in states.values():
        if state.on_timeout is not None and state.on_timeout not in states:
            if state.on_timeout not in triggers_by_state[state.name]:
                allowed = sorted(triggers_by_state[state.name])
                check.error(state.line, f"state {state.name!r}: on_timeout {state.on_timeout!r} "
                            "is neither a state nor an event this state accepts; events: "
                            f"{', '.join(allowed) or 'none'}; states: {names}")
        counter = state.counter
        if counter is not None:
            if counter.failure not in states:
                check.error(state.line, f"state {state.name!r}: counter failure state "
                            f"{counter.failure!r} does not exist; states: {names}")
            elif not states[counter.failure].terminal:
                check.error(state.line, f"state {state.name!r}: counter failure state "
                            f"{counter.failure!r} must be terminal (a failure waits for an "
                            "operator)")
            for event in counter.count:
                if event == TIMEOUT_EVENT:
                    if state.timeout is None and state.deadline_var is None:
                        check.error(state.line, f"state {state.name!r} counts timeouts but "
                                    "has no timeout")
                elif event not in triggers_by_state[state.name]:
                    check.error(state.line, f"state {state.name!r}: counter counts event "
                                f"{event!r}, which the state does not accept")
        if isinstance(state.clear_counters, tuple):
            known = {s.counter.name for s in states.values() if s.counter}
            for name in state.clear_counters:
                if name not in known:
                    check.error(state.line, f"state {state.name!r}: clear_counters names "
                                f"unknown counter {name!r}; counters: {', '.join(sorted(known))}")


def _check_firers(check: _Checker, states: dict[str, StateDef],
                  transitions: list[TransitionDef]) -> None:
    """Operation results come only from workers, and ``timeout`` fires only the
    events a state's ``on_timeout`` names."""
    timeout_events = {(s.name, s.on_timeout) for s in states.values()
                      if s.on_timeout is not None and s.on_timeout not in states}
    for t in transitions:
        sources = expand_sources(t.sources, states)
        results_of = sorted({op for source in sources for op in states[source].on_enter
                             if t.trigger.startswith(f"{op}_")})
        if results_of and t.by != ("operation",):
            check.error(t.line, f"transition {t.trigger!r} is the result of operation "
                        f"{results_of[0]!r}, which only a worker reports: it must be "
                        f"by: operation, not {', '.join(t.by)}")
        named = [s for s in sources if (s, t.trigger) in timeout_events]
        if named and "timeout" not in t.by:
            check.error(t.line, f"state {named[0]!r} times out with event {t.trigger!r}: "
                        "its by must include timeout")
        if "timeout" in t.by and not named:
            check.error(t.line, f"transition {t.trigger!r} is by timeout, but no state it "
                        "leaves names it as on_timeout")


def expand_sources(sources: tuple[str, ...], states: dict[str, StateDef]) -> list[str]:
    """``'*'`` means every non-terminal state; other names stand for themselves."""
    result: list[str] = []
    for source in sources:
        if source == "*":
            result.extend(name for name, s in states.items() if not s.terminal)
        elif source in states:
            result.append(source)
    return list(dict.fromkeys(result))


def load_definitions(directory: Path) -> dict[str, MachineDefinition]:
    """Load every ``*.yaml`` file of a directory, keyed by machine kind.

    Raises:
        DefinitionError: any file has problems (all files' problems are listed).
    """
    if not directory.is_dir():
        raise DefinitionError([Problem(path=str(directory), line=0,
                                       message="not a directory of state machine definitions")])
    problems: list[Problem] = []
    result: dict[str, MachineDefinition] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            definition = load_definition(path)
        except DefinitionError as exc:
            problems.extend(exc.problems)
            continue
        if definition.kind in result:
            problems.append(Problem(path=str(path), line=1, message=f"kind {definition.kind!r} "
                                    f"is already defined by {result[definition.kind].path}"))
            continue
        result[definition.kind] = definition
    if problems:
        raise DefinitionError(problems)
    return result
