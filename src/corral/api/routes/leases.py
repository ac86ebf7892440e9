"""Leases: request boards, hold them, give them back (docs/leases.md).

A person's or a run's token (user role and up) asks for leases and manages
its own; the token a request answers with (the lease's own, role holder) may
manage that lease and fire the holder's events at its boards. Admins revoke.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, Field

from corral.api.callbacks import EVENT, NAME, ApiError
from corral.api.deps import AnyToken, EngineDep, Viewer
from corral.api.errors import ERRORS
from corral.api.models import MachineOut
from corral.api.routes.machines import MachineKind
from corral.leases import Caller, LeaseEnded, LeaseRequest, LeaseService
from corral.names import LEASE_NAME, Role
from corral.payload import NONBLANK_PATTERN, TEXT_PATTERN
from corral.tokens import Principal

LeaseName = Annotated[str, Path(pattern=LEASE_NAME.pattern, description="The lease's id.")]
BoardName = Annotated[str, Path(pattern=NAME, description="The board's name.")]

router = APIRouter(tags=["leases"])

# The routes every kind shares that a lease keeps: its history. The lease
# routes list, show and explain it; only the lease service changes it.
KIND = MachineKind(shared=frozenset({"history"}))


class RenewIn(BaseModel):
    duration: Annotated[int, Field(ge=1, le=366 * 86400)] | None = None


class ReleaseIn(BaseModel):
    reason: Annotated[str, Field(max_length=500, pattern=TEXT_PATTERN)] | None = None


class RevokeIn(BaseModel):
    reason: Annotated[str, Field(min_length=1, max_length=500, pattern=NONBLANK_PATTERN)]
    if_state: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")] | None = None


class LeaseOut(BaseModel):
    """A lease as every answer shows it (never its token)."""

    id: str = Field(description="lease-N")
    state: str
    owner: str
    project: str | None = Field(description="The share it counts against, when not its owner.")
    priority: int
    board: str | None = Field(description="The one board asked for by name.")
    selector: str | None
    count: int
    release: str | None
    duration: int = Field(description="Seconds from activation to expiry.")
    heartbeat: int | None = Field(description="Seconds without a heartbeat that end it.")
    on_return: str
    purpose: str | None
    boards: list[str] = Field(description="The boards it holds (or held, once it ended).")
    epochs: dict[str, int] = Field(description="Each held board's lease epoch (fencing).")
    requested_at: str | None
    wait_until: str | None
    activated_at: str | None
    expires_at: str | None
    heartbeat_at: str | None
    deadline: str | None
    ended_by: str | None
    ended_at: str | None


class LeaseCreated(LeaseOut):
    token: str = Field(description="The lease's own token (role holder), shown only here.")


class HolderEventOut(BaseModel):
    board: str
    event: str
    from_state: str
    to_state: str
    lease: str
    epoch: int


class HolderOut(BaseModel):
    lease: str
    owner: str
    state: str
    epoch: int
    purpose: str | None
    expires_at: str | None


class HeldOut(BaseModel):
    """One time a lease held a board."""

    model_config = {"populate_by_name": True}

    lease: str
    owner: str
    purpose: str | None
    epoch: int
    held_from: str | None = Field(alias="from")
    until: str | None


class QueuedLeaseOut(BaseModel):
    """A queued lease at its place in its priority class."""

    place: int = Field(description="1 is served first in its class.")
    id: str
    owner: str
    project: str | None = Field(description="The share it counts against, when not its owner.")
    board: str | None = Field(description="The one board asked for by name.")
    selector: str | None
    count: int
    release: str | None
    purpose: str | None
    requested_at: str | None
    wait_until: str | None = Field(description="When it is cancelled if still queued.")
    waited_seconds: float
    share_board_seconds: int = Field(description=(
        "Board-seconds its share held over lease_share_window: less goes first."))
    over_quota: bool = Field(description=(
        "Its owner holds too many boards to take it now (lease_quota_boards): passed "
        "over until some are given back."))
    state: str = Field(description="queued, or allocating.")
    reserving: bool = Field(description=(
        "It is allocating: it waited lease_reserve_after, and the free boards it could "
        "use are kept from the leases below it (for lease_reserve_for)."))


class QueueClassOut(BaseModel):
    priority: int
    queued: int = Field(description="Leases queued in this class (all, even past the limit).")
    leases: list[QueuedLeaseOut]


class LeaseQueueOut(BaseModel):
    """The queue in the order the scheduler's next pass serves it."""

    at: str | None = Field(description="The server's time of the ranking.")
    queued: int = Field(description="Leases queued in all.")
    shown: int = Field(description="Leases in this answer (at most the limit).")
    classes: list[QueueClassOut] = Field(description="Highest priority first.")


def service(request: Request) -> LeaseService:
    leases = request.app.state.services.leases
    if leases is None:
        raise ApiError(404, "not_found", "leases are not served: the definitions have no "
                                         "lease kind")
    return leases  # type: ignore[no-any-return]


def caller(who: Principal) -> Caller:
    return Caller(name=who.name, role=who.role,
                  lease=who.board if who.role == Role.HOLDER else None)


def _reader(who: Principal, name: str) -> None:
    """Reading a lease needs the viewer role, or that lease's own token."""
    if who.role == Role.HOLDER:
        if who.board != name:
            raise ApiError(403, "forbidden", f"this token belongs to lease {who.board}")
    elif not who.at_least("viewer"):
        raise ApiError(403, "forbidden", f"token {who.name!r} is {who.role}; reading "
                                         "leases needs the viewer role")


def _fenced(request: Request, exc: LeaseEnded) -> None:
    refusals = getattr(request.app.state.services, "lease_refusals", None)
    if refusals is not None:
        refusals.inc()
    raise exc


@router.post("/api/v1/leases", status_code=201, responses=ERRORS,
             response_model=LeaseCreated,
             summary="Ask for boards (user role); answers the lease with its token, "
                     "shown once.")
def request_lease(body: LeaseRequest, request: Request, who: AnyToken) -> dict[str, Any]:
    return service(request).request(body, caller(who))


@router.get("/api/v1/leases", responses=ERRORS, response_model=list[LeaseOut],
            summary="Leases, newest first.")
def list_leases(
    request: Request, _: Viewer,
    state: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,62}$")] = None,
    owner: Annotated[str | None, Query(max_length=200, pattern=TEXT_PATTERN)] = None,
    open: Annotated[bool, Query(description="Only leases that have not ended.")] = False,
    ended: Annotated[bool, Query(description=(
        "Only leases that have ended, the last to end first. With open: every "
        "lease, newest first."))] = False,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[dict[str, Any]]:
    return service(request).list(states=[state] if state else None, owner=owner,
                                 open_only=open, ended_only=ended, limit=limit)


# Before /api/v1/leases/{name}: "queue" has the shape of a lease name.
@router.get("/api/v1/leases/queue", responses=ERRORS, response_model=LeaseQueueOut,
            summary="Queued leases by priority class, in the order the scheduler serves "
                    "them.")
def lease_queue(request: Request, _: Viewer,
                limit: Annotated[int, Query(ge=1, le=5000, description=(
                    "At most this many leases, the first in order."))] = 500,
                ) -> dict[str, Any]:
    return service(request).queue(limit=limit)


@router.get("/api/v1/leases/{name}", responses=ERRORS, response_model=LeaseOut,
            summary="One lease.")
def show_lease(name: LeaseName, request: Request, who: AnyToken) -> dict[str, Any]:
    _reader(who, name)
    return service(request).show(name)


@router.get("/api/v1/leases/{name}/explain", responses=ERRORS,
            summary="Why a lease waits: its place, what ruled boards out, who blocks it.")
def explain_lease(name: LeaseName, request: Request, who: AnyToken) -> dict[str, Any]:
    _reader(who, name)
    return service(request).explain(name)


@router.post("/api/v1/leases/{name}/renew", responses=ERRORS, response_model=LeaseOut,
             summary="Push an active lease's expiry (capped by lease_max_total).")
def renew_lease(name: LeaseName, request: Request, who: AnyToken,
                body: Annotated[RenewIn | None, Body()] = None) -> dict[str, Any]:
    try:
        return service(request).renew(name, caller(who), body.duration if body else None)
    except LeaseEnded as exc:
        _fenced(request, exc)
        raise


@router.post("/api/v1/leases/{name}/heartbeat", responses=ERRORS,
             response_model=LeaseOut,
             summary="The holder is alive (a lease with a heartbeat ends without one).")
def heartbeat_lease(name: LeaseName, request: Request, who: AnyToken) -> dict[str, Any]:
    try:
        return service(request).heartbeat(name, caller(who))
    except LeaseEnded as exc:
        _fenced(request, exc)
        raise


@router.post("/api/v1/leases/{name}/release", responses=ERRORS,
             response_model=LeaseOut,
             summary="Give a lease back (a queued one is cancelled); idempotent.")
def release_lease(name: LeaseName, request: Request, who: AnyToken,
                  body: Annotated[ReleaseIn | None, Body()] = None) -> dict[str, Any]:
    return service(request).release(name, caller(who), reason=body.reason if body else None)


@router.post("/api/v1/leases/{name}/revoke", responses=ERRORS,
             response_model=LeaseOut,
             summary="End anyone's lease now (admin), optionally only from a given state.")
def revoke_lease(name: LeaseName, body: RevokeIn, request: Request,
                 who: AnyToken) -> dict[str, Any]:
    return service(request).revoke(name, caller(who), reason=body.reason,
                                   if_state=body.if_state)


@router.post("/api/v1/leases/{name}/boards/{board}/events/{event}", responses=ERRORS,
             response_model=HolderEventOut,
             summary="A holder's event at one of its boards (the lease's own token); "
                     "409 once the lease has ended.")
def holder_event(name: LeaseName, board: BoardName,
                 event: Annotated[str, Path(pattern=EVENT)], request: Request,
                 who: AnyToken,
                 payload: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    try:
        return service(request).holder_event(name, caller(who), board, event, payload)
    except LeaseEnded as exc:
        _fenced(request, exc)
        raise


@router.get("/api/v1/leases/{name}/boards/{board}", responses=ERRORS, response_model=MachineOut,
            summary="One of a lease's boards, for its holder.")
def holder_board(name: LeaseName, board: BoardName, request: Request, who: AnyToken,
                 engine: EngineDep) -> dict[str, Any]:
    _reader(who, name)
    lease = service(request).show(name)
    if board not in lease["boards"]:
        raise ApiError(404, "not_found", f"lease {name} has no board {board!r}")
    return engine.describe(engine.get("board", board), "viewer")


@router.get("/api/v1/boards/{board}/holders", responses=ERRORS,
            response_model=list[HeldOut], response_model_by_alias=True,
            summary="Who held a board (at a time), newest first.")
def board_holders(board: BoardName, request: Request, _: Viewer,
                  at: Annotated[datetime | None, Query()] = None) -> list[dict[str, Any]]:
    return service(request).holders(board, at=at)


@router.get("/api/v1/boards/{board}/holder", responses=ERRORS,
            response_model=HolderOut | None,
            summary="The lease holding a board now (null when none).")
def board_holder(board: BoardName, request: Request, _: Viewer,
                 engine: EngineDep) -> dict[str, Any] | None:
    engine.get("board", board)
    return service(request).holder_of(board)
