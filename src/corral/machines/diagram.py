"""Mermaid state diagrams generated from a definition (``corral machines diagram``)."""

from __future__ import annotations

from corral.machines.definition import TIMEOUT_EVENT, MachineDefinition
from corral.machines.loader import expand_sources


def mermaid(definition: MachineDefinition) -> str:
    states = definition.states
    lines = ["stateDiagram-v2", f"    [*] --> {definition.initial}"]
    edges: dict[tuple[str, str], list[str]] = {}

    def edge(source: str, dest: str, label: str) -> None:
        edges.setdefault((source, dest), []).append(label)

    for t in definition.transitions:
        for source in expand_sources(t.sources, dict(states)):
            edge(source, t.dest or source, t.trigger if t.dest else f"{t.trigger} (stays)")
    for state in states.values():
        if state.on_timeout is not None:
            dest = state.on_timeout if state.on_timeout in states else next(
                (t.dest or state.name) for t in definition.transitions
                if t.trigger == state.on_timeout and state.name in expand_sources(
                    t.sources, dict(states)))
            when = f"{state.timeout:g}s" if state.timeout is not None else \
                f"at {state.deadline_var}"
            edge(state.name, dest, f"{TIMEOUT_EVENT} {when}")
        if state.counter is not None:
            c = state.counter
            edge(state.name, c.failure, f"{c.name} > {c.max}")
    for (source, dest), labels in edges.items():
        lines.append(f"    {source} --> {dest}: {', '.join(labels)}")
    for state in states.values():
        notes = []
        if state.on_enter:
            notes.append("on enter: " + ", ".join(state.on_enter))
        if notes:
            lines.append(f"    note right of {state.name}: {'; '.join(notes)}")
    failed = [s for s in states.values() if s.failed]
    if failed:
        lines.append("    classDef failed fill:#f88,stroke:#900")
        lines.append(f"    class {','.join(s.name for s in failed)} failed")
    return "\n".join(lines) + "\n"


def replace_block(markdown: str, kind: str, diagram: str) -> str:
    """Put ``diagram`` between ``<!-- diagram:KIND -->`` and ``<!-- /diagram:KIND -->``.

    Raises:
        ValueError: the markers are missing.
    """
    start, end = f"<!-- diagram:{kind} -->", f"<!-- /diagram:{kind} -->"
    if start not in markdown or end not in markdown:
        raise ValueError(f"no {start} ... {end} block")
    head, rest = markdown.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n```mermaid\n{diagram}```\n{end}{tail}"
