"""What only boards have: the callback route, maintenance and retirement.

The callback route (``POST /api/v1/boards/{name}/events/{event}``) is what
every board calls; :mod:`corral.api.callbacks` answers it before the
framework sees it. :data:`callback` declares it here so that
``/openapi.json`` documents it, and answers with the same code when the app
runs without the fast path in front (the tests compare the two).

The maintenance and retire routes name board events in code; :data:`NEEDS`
declares them, and :func:`corral.api.app.create_app` refuses definitions that
lack one before it serves anything.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import TypeAdapter

from corral.api.callbacks import EVENT, MAX_IDEMPOTENCY_KEY, MAX_PAYLOAD, NAME
from corral.api.deps import Admin, EngineDep, Operator, ServicesDep, bearer
from corral.api.errors import ERRORS
from corral.api.models import CheckIn, ErrorOut, MaintenanceIn, Payload, RetireIn, TransitionOut
from corral.api.routes.machines import MachineKind
from corral.machines.needs import Needs
from corral.tokens import BOARD_ROLE, Principal

MAINTENANCE, LEAVE_MAINTENANCE, RETIRE = "maintenance", "leave_maintenance", "retire"

# The board events these routes fire (held against board.yaml at start-up).
NEEDS = Needs(service="api", kind="board", events=(MAINTENANCE, LEAVE_MAINTENANCE, RETIRE,
                                                   "check"))

# The body the fast path reads (corral.api.callbacks.parse_payload, then the
# payload check), as the pydantic type that states the same rules. Its
# PayloadValue is in the document's components: FireIn's payload has it too.
PAYLOAD_SCHEMA = {**{k: v for k, v in TypeAdapter(Payload | None).json_schema(
    ref_template="#/components/schemas/{model}").items() if k != "$defs"},
    "title": "Payload", "description": "Optional JSON object recorded with the event."}

BoardName = Annotated[str, Path(pattern=NAME, description="The board's name.")]


def the_board_itself(who: Principal, name: str) -> bool:
    """A board token reads its own board (its state tells it what to report next)."""
    return who.role == BOARD_ROLE and who.board == name


KIND = MachineKind(may_read=the_board_itself)

callback = APIRouter(tags=["callbacks"])


@callback.post(
    "/api/v1/boards/{name}/events/{event}", response_model=None,
    responses=ERRORS | {200: {"model": TransitionOut,
                              "description": "The transition, committed."},
                        413: {"model": ErrorOut, "description": "The payload is "
                              f"larger than {MAX_PAYLOAD} bytes."},
                        415: {"model": ErrorOut, "description": "The payload is "
                              "not sent as application/json."}},
    openapi_extra={"requestBody": {"content": {"application/json": {
        "schema": PAYLOAD_SCHEMA}}}},
    summary="Report an event for a board (board token), or fire one (operator).")
async def post_event(
    request: Request,
    services: ServicesDep,
    name: BoardName,
    event: Annotated[str, Path(pattern=EVENT, description="The event's name.")],
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=MAX_IDEMPOTENCY_KEY,
        description="Repeat a request safely: a repeated key returns the first "
                    "response without firing again.")] = None,
) -> JSONResponse:
    status, body, headers = await services.callbacks.serve(request.scope, request.receive,
                                                            name, event)
    return JSONResponse(body, status_code=status, headers=headers or None)


router = APIRouter(tags=["boards"])


@router.post("/api/v1/boards/{name}/maintenance", response_model=TransitionOut,
             responses=ERRORS, summary="Put a board in or out of maintenance.")
def maintenance(name: BoardName, body: MaintenanceIn, engine: EngineDep,
                who: Operator) -> TransitionOut:
    event = MAINTENANCE if body.on else LEAVE_MAINTENANCE
    return TransitionOut.from_result(engine.fire("board", name, event, source="operator",
                                                 actor=who.name, reason=body.reason,
                                                 role=who.role))


@router.post("/api/v1/boards/{name}/retire", response_model=TransitionOut, responses=ERRORS,
             summary="Retire a board for good (admin).")
def retire(name: BoardName, body: RetireIn, engine: EngineDep, who: Admin) -> TransitionOut:
    return TransitionOut.from_result(engine.fire("board", name, RETIRE, source="operator",
                                                 actor=who.name, reason=body.reason,
                                                 role=who.role))


@router.post("/api/v1/boards/{name}/check", response_model=TransitionOut, responses=ERRORS,
             summary="Health-check a board now (and, with loop, again and again: burn-in).")
def check(name: BoardName, body: CheckIn, engine: EngineDep, who: Operator) -> TransitionOut:
    from corral.health.service import request_check

    return TransitionOut.from_result(request_check(engine, name, loop=body.loop, actor=who.name,
                                                   reason=body.reason, role=who.role))
