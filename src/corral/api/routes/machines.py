"""The operator routes every machine kind shares: list, show, explain,
history, force-state and fire, under ``/api/v1/{kind}s``.

One router per loaded kind, built by :func:`router`. What a kind does
differently is data, a :class:`MachineKind` its own module declares (a job's
document adds its spec's progress, a board may read itself), so these routes
read the same for every kind.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time, and they name values built in :func:`router`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from corral.api.callbacks import NAME, ApiError
from corral.api.deps import AnyToken, EngineDep, Operator, Services, ServicesDep, Viewer
from corral.api.errors import ERRORS
from corral.api.models import (
    FireIn,
    ForceStateIn,
    HistoryEntryOut,
    HistoryPage,
    MachineOut,
    TransitionOut,
)
from corral.tokens import Principal

# Machines per page of a list (the default, and the most a client may ask for).
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000


def describe_machine(services: Services, kind: str, name: str, role: str) -> dict[str, Any]:
    """A machine's document, as ``role`` sees it."""
    engine = services.engine
    return engine.describe(engine.get(kind, name), role)


def nobody_else(who: Principal, name: str) -> bool:
    return False


@dataclass(frozen=True, kw_only=True)
class MachineKind:
    """What one kind's routes do differently from the others'."""

    # The document of ``GET /api/v1/{kind}s/{name}`` and how it is made.
    document: type[MachineOut] = MachineOut
    describe: Callable[[Services, str, str, str], dict[str, Any]] = field(
        default=describe_machine)
    # Who, besides viewers, may read one machine (``who``, the machine's name).
    may_read: Callable[[Principal, str], bool] = field(default=nobody_else)
    # Which of the shared routes the kind has: reading (list, show,
    # explain), history, changing (force-state, fire).
    shared: frozenset[str] = frozenset({"reading", "history", "changing"})


def router(kind: str, hooks: MachineKind) -> APIRouter:
    """The shared routes of one machine kind."""
    routes = APIRouter(tags=[f"{kind}s"])
    name = Annotated[str, Path(pattern=NAME, description=f"The {kind}'s name.")]
    if "reading" in hooks.shared:
        _reading(routes, kind, name, hooks)
    if "history" in hooks.shared:
        _history(routes, kind, name)
    if "changing" in hooks.shared:
        _changing(routes, kind, name)
    return routes


def _reading(routes: APIRouter, kind: str, Name: Any, hooks: MachineKind) -> None:
    plural = f"{kind}s"

    @routes.get(f"/api/v1/{plural}", response_model=list[MachineOut], responses=ERRORS,
                summary=f"List {plural}.", operation_id=f"list_{plural}")
    def list_machines(
        request: Request,
        response: Response,
        engine: EngineDep,
        who: Viewer,
        state: Annotated[list[str] | None, Query(description="Only these states.")] = None,
        failed: Annotated[bool, Query(description="Only those in a failed state.")] = False,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many, "
                                    "by name.")] = DEFAULT_PAGE,
        after: Annotated[str | None, Query(pattern=NAME, description="Those named after "
                                           "this one (the last of the previous page).")
                         ] = None,
    ) -> list[MachineOut]:
        """A page of machines by name. A full page comes with a ``Link``
        header (``rel="next"``) to the next one."""
        # An unknown state is a 404, as it is for the CLI.
        rows = engine.list_machines(kind, states=state, failed=failed, after=after,
                                    limit=limit)
        if len(rows) == limit:
            following = request.url.include_query_params(after=rows[-1].name)
            response.headers["Link"] = f'<{following}>; rel="next"'
        return [MachineOut(**engine.describe(r, who.role)) for r in rows]

    @routes.get(f"/api/v1/{plural}/{{name}}", response_model=hooks.document,
                responses=ERRORS, summary=f"Show one {kind}.", operation_id=f"show_{kind}")
    def show_machine(name: Name, services: ServicesDep, who: AnyToken) -> MachineOut:
        if not (who.at_least("viewer") or hooks.may_read(who, name)):
            raise ApiError(403, "forbidden", f"token {who.name!r} may not read {kind} {name!r}")
        return hooks.document(**hooks.describe(services, kind, name, who.role))

    @routes.get(f"/api/v1/{plural}/{{name}}/explain", response_model=dict[str, Any],
                responses=ERRORS, summary=f"Why a {kind} is where it is.",
                operation_id=f"explain_{kind}")
    def explain_machine(name: Name, engine: EngineDep, who: Viewer) -> dict[str, Any]:
        """The transition into its state (event, source, actor, reason, when),
        time in state against the timeout and what the timeout does, each
        counter against its limit, the last operation of each kind with its
        result, the operations queued or leased, the events the asker may
        fire, and a one-paragraph summary."""
        return engine.explain(kind, name, who.role)


def _history(routes: APIRouter, kind: str, Name: Any) -> None:
    @routes.get(f"/api/v1/{kind}s/{{name}}/history", response_model=HistoryPage,
                responses=ERRORS, summary=f"A {kind}'s history, newest first.",
                operation_id=f"{kind}_history")
    def machine_history(
        name: Name,
        engine: EngineDep,
        _: Viewer,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, le=2**63 - 1,
                                            description="Entries older than this id.")
                          ] = None,
    ) -> HistoryPage:
        entries = engine.history(kind, name, limit=limit, before_id=before)
        return HistoryPage(
            entries=[HistoryEntryOut(**{k: getattr(e, k) for k in HistoryEntryOut.model_fields})
                     for e in entries],
            next_before=entries[-1].id if len(entries) == limit else None)


def _changing(routes: APIRouter, kind: str, Name: Any) -> None:
    @routes.post(f"/api/v1/{kind}s/{{name}}/force-state", response_model=TransitionOut,
                 responses=ERRORS, operation_id=f"force_{kind}_state",
                 summary="Force a state (running its entry operations), optionally only "
                         "from if_state.")
    def force_state(name: Name, body: ForceStateIn, engine: EngineDep,
                    who: Operator) -> TransitionOut:
        return TransitionOut.from_result(engine.force_state(
            kind, name, body.state, actor=who.name, reason=body.reason,
            if_state=body.if_state, role=who.role))

    @routes.post(f"/api/v1/{kind}s/{{name}}/fire", response_model=TransitionOut,
                 responses=ERRORS, operation_id=f"fire_{kind}_event",
                 summary=f"Fire an event at a {kind} as an operator, with a reason.")
    def fire(name: Name, body: FireIn, engine: EngineDep, who: Operator) -> TransitionOut:
        return TransitionOut.from_result(engine.fire(
            kind, name, body.event, source="operator", payload=body.payload, actor=who.name,
            reason=body.reason, role=who.role))
