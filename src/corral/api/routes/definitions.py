"""The machine definitions as loaded, with how many machines are in each state.

What the console lists its kinds and draws its diagrams and state filters
from, so that it shows a lab's own ``statemachines/`` rather than a copy of
them.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path

from corral.api.callbacks import NAME, ApiError
from corral.api.deps import EngineDep, Viewer
from corral.api.errors import ERRORS
from corral.api.models import KindOut

router = APIRouter(tags=["definitions"])


@router.get("/api/v1/definitions", response_model=list[KindOut], responses=ERRORS,
            summary="The machine kinds loaded, each with its description.",
            operation_id="list_definitions")
def list_definitions(engine: EngineDep, _: Viewer) -> list[KindOut]:
    """Every kind this Corral serves (one per file in ``statemachines/``):
    what the console lists."""
    return [KindOut(kind=kind, description=engine.machines[kind].definition.description)
            for kind in engine.machines.kinds()]


@router.get("/api/v1/definitions/{kind}", responses=ERRORS,
            summary="A machine kind's definition, with the machines in each state.",
            operation_id="show_definition")
def show_definition(kind: Annotated[str, Path(pattern=NAME)], engine: EngineDep,
                    _: Viewer) -> dict[str, Any]:
    """States (description, failed, terminal, timeout and what it does,
    counter, how many machines are in it) and transitions (trigger,
    sources, destination, who fires it), as loaded from
    ``statemachines/``: what the console draws its diagrams from."""
    if kind not in engine.machines:
        raise ApiError(404, "not_found", f"no machine kind {kind!r}; kinds: "
                       f"{', '.join(engine.machines.kinds())}")
    definition = engine.machines[kind].definition
    counts, _age = engine.sweeper.state_counts(max_age=30)
    held = {state: n for k, state, n in counts if k == kind}
    return {
        "kind": kind, "description": definition.description,
        "initial": definition.initial,
        "states": [{"name": st.name, "description": st.description, "failed": st.failed,
                    "terminal": st.terminal, "timeout": st.timeout,
                    "on_timeout": st.on_timeout,
                    "counter": ({"name": st.counter.name, "max": st.counter.max,
                                 "failure": st.counter.failure}
                                if st.counter else None),
                    "machines": held.get(st.name, 0)}
                   for st in definition.states.values()],
        "transitions": [{"trigger": t.trigger, "sources": list(t.sources),
                         "dest": t.dest, "by": list(t.by)}
                        for t in definition.transitions],
    }
