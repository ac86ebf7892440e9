"""What the services rely on in the machine definitions, checked at start-up.

``statemachines/*.yaml`` are the lab's to edit (docs/state-machines.md,
"Customising"), but the pool and job services name some of their states and
events in code: the scheduler looks for ``queued`` jobs, a pool is taken from
``idle``, a job's action ends with ``action_done``. Each service declares
those names as a :class:`Needs`, and :func:`check_needs` holds the loaded
definitions to them before anything runs, so an edited file that drops one
stops start-up with the file and the missing name instead of failing later.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from corral.machines.loader import DefinitionError, Problem
from corral.machines.machine import MachineSet


@dataclass(frozen=True, kw_only=True)
class Needs:
    """The states and events of one machine kind that a service names in code."""

    service: str
    kind: str
    states: tuple[str, ...] = ()
    events: tuple[str, ...] = ()


def check_needs(machines: MachineSet, needs: Iterable[Needs]) -> None:
    """Refuse definitions that lack a state or event a service relies on.

    A kind that is not loaded at all turns its services off, and is not an
    error here.

    Raises:
        DefinitionError: one problem per missing name, naming the file.
    """
    problems = []
    for need in needs:
        if need.kind not in machines:
            continue
        definition = machines[need.kind].definition
        triggers = {t.trigger for t in definition.transitions}
        for state in need.states:
            if state not in definition.states:
                problems.append(Problem(
                    path=definition.path, line=1,
                    message=f"the {need.service} service needs state {state!r} in the "
                            f"{need.kind} machine; states: {', '.join(definition.states)}"))
        for event in need.events:
            if event not in triggers:
                problems.append(Problem(
                    path=definition.path, line=1,
                    message=f"the {need.service} service needs event {event!r} in the "
                            f"{need.kind} machine; events: {', '.join(sorted(triggers))}"))
    if problems:
        raise DefinitionError(problems)
