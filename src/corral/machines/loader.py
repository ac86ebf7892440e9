"""Read and validate ``statemachines/*.yaml`` definitions.

A definition is input like any other: every problem is reported at once, each
naming the file, the line and what is allowed, and a malformed file stops
start-up before anything touches the database. See ``docs/state-machines.md``
for the format.

Reading goes file → :mod:`corral.machines.schema` (each value's shape, through
:func:`corral.validation.validate`) → the neutral values of
:mod:`corral.machines.definition` → :mod:`corral.machines.rules` (how the
parts fit together). The builder in :mod:`corral.machines.machine` reads only
the neutral values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from corral.errors import CorralError
from corral.machines.definition import (
    Counter,
    MachineDefinition,
    StateDef,
    TransitionDef,
    VarDef,
)
from corral.machines.rules import Parts, definition_problems, expand_sources, state_problems
from corral.machines.schema import (
    NAME_RE,
    OPTIONAL_MARK,
    CounterModel,
    DefinitionModel,
    StateModel,
    TransitionModel,
)
from corral.validation import Problem, validate
from corral.yamlio import LineDict, LineList, YamlSyntaxError, load_yaml

__all__ = ["DefinitionError", "Problem", "expand_sources", "load_definition",
           "load_definitions", "parse_definition"]

_STATE = TypeAdapter(StateModel)
_TRANSITION = TypeAdapter(TransitionModel)


class DefinitionError(CorralError):
    """One or more problems in a state machine definition file."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


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
    """Validate a definition given as text; ``path`` names it in errors.

    Raises:
        DefinitionError: listing every problem found, each with its line.
    """
    try:
        doc = load_yaml(text)
    except YamlSyntaxError as exc:
        raise DefinitionError([Problem(path=path, line=exc.line, message=str(exc))]) from None
    model, problems = validate(DefinitionModel, doc, path)
    parts, found = _parts(doc)
    found.extend(definition_problems(parts))
    problems += [Problem(path=path, line=line, message=message) for line, message in found]
    if problems:
        raise DefinitionError(sorted(problems, key=lambda p: p.line))
    assert model is not None
    return MachineDefinition(kind=model.kind, initial=model.initial, states=dict(parts.states),
                             transitions=parts.transitions, path=path,
                             description=model.description or "")


def _parts(doc: Any) -> tuple[Parts, list[tuple[int, str]]]:
    """Every state and transition of ``doc`` that is valid on its own, and the
    problems of how each valid state waits."""
    if not isinstance(doc, LineDict):
        return Parts(states={}, names=(), transitions=()), []
    raw_states = doc.get("states")
    if not isinstance(raw_states, LineDict):
        raw_states = LineDict()
    names = tuple(name for name in raw_states if NAME_RE.match(name))
    states: dict[str, StateDef] = {}
    found: list[tuple[int, str]] = []
    for name in names:
        body, line = raw_states[name], raw_states.line_of(name)
        state = StateModel() if body is None else _valid(_STATE, body)
        if state is not None:
            states[name] = _state(name, state, line, body)
            keys = body if isinstance(body, LineDict) else _empty(line)
            found.extend(state_problems(name, state, keys.line_of))
    raw_transitions = doc.get("transitions")
    transitions: list[TransitionDef] = []
    if isinstance(raw_transitions, LineList):
        for index, item in enumerate(raw_transitions):
            transition = _valid(_TRANSITION, item)
            if transition is not None:
                transitions.append(_transition(transition, raw_transitions.line_of(index)))
    initial = doc.get("initial")
    return Parts(states=states, names=names, transitions=tuple(transitions),
                 initial=initial if isinstance(initial, str) else None,
                 initial_line=doc.line_of("initial")), found


def _valid(adapter: TypeAdapter[Any], value: Any) -> Any:
    """``value`` validated, or None (its problems are the whole file's)."""
    try:
        return adapter.validate_python(value)
    except ValidationError:
        return None


def _empty(line: int) -> LineDict:
    keys = LineDict()
    keys.line, keys.key_lines = line, {}
    return keys


def _state(name: str, state: StateModel, line: int, body: Any) -> StateDef:
    ops = body.get("on_enter") if isinstance(body, LineDict) else None
    op_lines = tuple(ops.line_of(index) if isinstance(ops, LineList) else body.line_of("on_enter")
                     for index in range(len(state.on_enter)))
    return StateDef(
        name=name, line=line, description=state.description or "",
        timeout=state.timeout, on_timeout=state.on_timeout,
        counter=_counter(name, state.counter) if state.counter is not None else None,
        terminal=state.terminal or state.failed, failed=state.failed,
        on_enter=tuple(state.on_enter), on_enter_lines=op_lines,
        clear_counters=state.clear_counters, clear_vars=state.clear_vars,
        deadline_var=state.deadline_var,
    )


def _counter(state: str, counter: CounterModel) -> Counter:
    return Counter(name=counter.name or state, max=counter.max, failure=counter.failure,
                   count=tuple(counter.count))


def _transition(transition: TransitionModel, line: int) -> TransitionDef:
    return TransitionDef(
        trigger=transition.trigger, sources=tuple(transition.source), dest=transition.dest,
        line=line, by=tuple(dict.fromkeys(transition.by)),
        vars=tuple(VarDef(name=name, type=spec.removesuffix(OPTIONAL_MARK),
                          required=not spec.endswith(OPTIONAL_MARK))
                   for name, spec in transition.vars.items()),
    )


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
