"""The HTTP API: board callbacks, the operator API, metrics and health.

Endpoints are plain functions run in a thread pool; concurrent callbacks reach
:meth:`Engine.fire` together and share transactions through group commit.
A response is sent only after the transaction holding its event has
committed. Every error is JSON ``{"error", "message", ...}`` with a status
that says what to do: 401 (no or bad token), 403 (token not allowed here), 404
(no such board), 409 (the board's state refuses it; ``allowed_events`` lists
what it accepts), 422 (malformed request).

No ``from __future__ import annotations`` here: FastAPI reads the endpoint
annotations at run time, and they name dependencies defined in ``create_app``.
"""


import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
import psycopg
import sqlalchemy.exc
from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral import __version__
from corral.engine.core import Engine, FireRequest, FireResult
from corral.errors import Conflict, CorralError, InvalidRequest, NotFound, SchemaNotCurrent
from corral.store import queries as q
from corral.store.migrate import require_current
from corral.tokens import Principal, TokenStore

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
EVENT = r"^[a-z][a-z0-9_]{0,62}$"


# ------------------------------------------------------------------ documents


class ErrorOut(BaseModel):
    error: str
    message: str
    allowed_events: list[str] | None = None
    details: list[dict[str, Any]] | None = Field(
        default=None, description="For 422: each problem with its location.")


class TransitionOut(BaseModel):
    board: str
    event: str
    from_state: str
    state: str
    epoch: int
    replayed: bool = Field(description="True when an Idempotency-Key repeated an earlier "
                                        "request and this is its first response.")


class BoardOut(BaseModel):
    name: str
    state: str
    failed: bool
    state_entered_at: datetime
    deadline: datetime | None
    counters: dict[str, int]
    epoch: int
    attrs: dict[str, Any]
    allowed_events: list[str]


class HistoryEntryOut(BaseModel):
    id: int
    epoch: int
    at: datetime
    event: str
    from_state: str
    to_state: str
    source: str
    actor: str | None
    reason: str | None
    payload: Any
    operation_id: int | None


class HistoryPage(BaseModel):
    entries: list[HistoryEntryOut]
    next_before: int | None = Field(description="Pass as `before` for the next, older page.")


class ForceStateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")
    if_state: str | None = Field(default=None, min_length=1, max_length=64)


class FireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(pattern=EVENT)
    payload: dict[str, Any] | None = None
    reason: str | None = Field(default=None, max_length=2000)


class MaintenanceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool
    reason: str | None = Field(default=None, max_length=2000)


class RetireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in ((401, "No token, or not a valid one."),
                       (403, "The token may not do this."),
                       (404, "No such board."),
                       (409, "The board's current state refuses this."),
                       (422, "The request is malformed."),
                       (503, "The database is unavailable; retry."))
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.extra = status, error, message, extra


def _status_of(exc: CorralError) -> tuple[int, str]:
    if isinstance(exc, NotFound):
        return 404, "not_found"
    if isinstance(exc, InvalidRequest):
        return 422, "invalid_request"
    if isinstance(exc, Conflict):
        return 409, "conflict"
    # Well-formed but refused (e.g. firing 'timeout' by hand).
    return 409, "refused"


# ------------------------------------------------------------------ the app


def create_app(engine: Engine, tokens: TokenStore, registry: CollectorRegistry, *,
               threads: int = 64) -> FastAPI:
    """The ASGI application; ``threads`` bounds the requests handled at once."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Endpoints run in anyio's thread pool: its size is how many events can
        # wait on one group commit together.
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan,
                  description="Persistent state machines for hardware test labs.")
    bearer = HTTPBearer(auto_error=False, description="A board or operator token.")

    @app.exception_handler(ApiError)
    def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.error, "message": exc.message, **exc.extra},
                            status_code=exc.status, headers=headers)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(sqlalchemy.exc.OperationalError)
    def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        # The database went away: nothing was committed; the client may retry
        # (with the same Idempotency-Key).
        return JSONResponse({"error": "unavailable",
                             "message": "the database is unavailable; retry later"},
                            status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # A body that cannot even be parsed is a malformed request like any other.
        status = 422 if exc.status_code == 400 else exc.status_code
        error = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 422: "invalid_request"}.get(status, "http_error")
        return JSONResponse({"error": error, "message": str(exc.detail)}, status_code=status,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
                   for e in exc.errors()]
        where = ", ".join(".".join(str(p) for p in d["loc"]) + ": " + d["msg"]
                          for d in details)
        return JSONResponse({"error": "invalid_request", "message": where or "invalid request",
                             "details": details}, status_code=422)

    @app.exception_handler(CorralError)
    def _corral_error(_: Request, exc: CorralError) -> JSONResponse:
        status, error = _status_of(exc)
        body: dict[str, Any] = {"error": error, "message": str(exc)}
        if hasattr(exc, "allowed"):
            body["error"] = "event_not_allowed"
            body["allowed_events"] = exc.allowed
        return JSONResponse(body, status_code=status)

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        # On the event loop: a cached token costs no thread hop; a new one is
        # checked against the database in a worker thread.
        if credentials is None:
            raise ApiError(401, "unauthorized", "an Authorization: Bearer token is required")
        found = tokens.cached(credentials.credentials) or await asyncio.to_thread(
            tokens.verify, credentials.credentials)
        if found is None:
            raise ApiError(401, "unauthorized", "the token is not valid")
        return found

    def role(needed: str):  # type: ignore[no-untyped-def]
        async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if not who.at_least(needed):
                raise ApiError(403, "forbidden",
                               f"this needs the {needed} role; token {who.name!r} is "
                               f"{who.role}")
            return who
        return check

    BoardName = Annotated[str, Path(pattern=NAME, description="The board's name.")]

    def board_doc(row: q.MachineRow) -> BoardOut:
        return BoardOut(**engine.describe(row))

    def transition_doc(result: FireResult) -> TransitionOut:
        return TransitionOut(board=result.name, event=result.event,
                             from_state=result.from_state, state=result.to_state,
                             epoch=result.epoch, replayed=result.replayed)

    # -------------------------------------------------------------- callbacks

    @app.post("/api/v1/boards/{name}/events/{event}", response_model=TransitionOut,
              responses=ERRORS, tags=["callbacks"],
              summary="Report an event for a board (board token), or fire one (operator).")
    async def post_event(
        name: BoardName,
        event: Annotated[str, Path(pattern=EVENT, description="The event's name.")],
        who: Annotated[Principal, Depends(principal)],
        payload: Annotated[dict[str, Any] | None, Body(
            description="Optional JSON object recorded with the event.")] = None,
        idempotency_key: Annotated[str | None, Header(
            alias="Idempotency-Key", min_length=1, max_length=200,
            description="Repeat a request safely: a repeated key returns the first "
                        "response without firing again.")] = None,
    ) -> TransitionOut:
        if who.role == "board":
            if who.board != name:
                raise ApiError(403, "forbidden", f"this token belongs to board {who.board!r}")
            source = "callback"
        elif who.at_least("operator"):
            source = "operator"
        else:
            raise ApiError(403, "forbidden", f"token {who.name!r} is {who.role}; firing "
                           "events needs a board token or the operator role")
        result = await engine.fire_async(FireRequest(
            kind="board", name=name, event=event, source=source, payload=payload,
            actor=who.name,
            idempotency=(who.name, idempotency_key) if idempotency_key else None))
        return transition_doc(result)

    # -------------------------------------------------------------- operators

    @app.get("/api/v1/boards", response_model=list[BoardOut], responses=ERRORS,
             tags=["boards"], summary="List boards.")
    def list_boards(
        _: Annotated[Principal, Depends(role("viewer"))],
        state: Annotated[list[str] | None, Query(description="Only these states.")] = None,
        failed: Annotated[bool, Query(description="Only boards in a failed state.")] = False,
    ) -> list[BoardOut]:
        # An unknown state is a 404, as it is for the CLI.
        return [board_doc(r) for r in engine.list_machines("board", states=state,
                                                           failed=failed)]

    @app.get("/api/v1/boards/{name}", response_model=BoardOut, responses=ERRORS,
             tags=["boards"], summary="Show one board.")
    def show_board(name: BoardName,
                   who: Annotated[Principal, Depends(principal)]) -> BoardOut:
        # A board may read itself (its state tells it what to report next).
        if not (who.board == name or who.at_least("viewer")):
            raise ApiError(403, "forbidden", f"token {who.name!r} may not read board {name!r}")
        return board_doc(engine.get("board", name))

    @app.get("/api/v1/boards/{name}/history", response_model=HistoryPage, responses=ERRORS,
             tags=["boards"], summary="A board's history, newest first.")
    def board_history(
        name: BoardName,
        _: Annotated[Principal, Depends(role("viewer"))],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[int | None, Query(ge=1, description="Entries older than this id."
                                            )] = None,
    ) -> HistoryPage:
        entries = engine.history("board", name, limit=limit, before_id=before)
        return HistoryPage(
            entries=[HistoryEntryOut(**{k: getattr(e, k) for k in HistoryEntryOut.model_fields})
                     for e in entries],
            next_before=entries[-1].id if len(entries) == limit else None)

    @app.post("/api/v1/boards/{name}/force-state", response_model=TransitionOut,
              responses=ERRORS, tags=["boards"],
              summary="Force a state (running its entry operations), optionally only from "
                      "if_state.")
    def force_state(name: BoardName, body: ForceStateIn,
                    who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
        return transition_doc(engine.force_state("board", name, body.state, actor=who.name,
                                                 reason=body.reason, if_state=body.if_state))

    @app.post("/api/v1/boards/{name}/fire", response_model=TransitionOut, responses=ERRORS,
              tags=["boards"], summary="Fire an event at a board as an operator, with a reason.")
    def fire(name: BoardName, body: FireIn,
             who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
        return transition_doc(engine.fire("board", name, body.event, source="operator",
                                          payload=body.payload, actor=who.name,
                                          reason=body.reason))

    @app.post("/api/v1/boards/{name}/maintenance", response_model=TransitionOut,
              responses=ERRORS, tags=["boards"], summary="Put a board in or out of maintenance.")
    def maintenance(name: BoardName, body: MaintenanceIn,
                    who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
        event = "maintenance" if body.on else "leave_maintenance"
        return transition_doc(engine.fire("board", name, event, source="operator",
                                          actor=who.name, reason=body.reason))

    @app.post("/api/v1/boards/{name}/retire", response_model=TransitionOut, responses=ERRORS,
              tags=["boards"], summary="Retire a board for good (admin).")
    def retire(name: BoardName, body: RetireIn,
               who: Annotated[Principal, Depends(role("admin"))]) -> TransitionOut:
        return transition_doc(engine.fire("board", name, "retire", source="operator",
                                          actor=who.name, reason=body.reason))

    # -------------------------------------------------------------- monitoring

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics.",
             response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["monitoring"], summary="The process is alive.")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["monitoring"], responses={503: {"model": ErrorOut}},
             summary="The database is reachable and its schema current.")
    def readyz() -> Any:
        try:
            with engine.db.begin() as conn:
                q.ping(conn)
            require_current(engine.db)
        except SchemaNotCurrent as exc:
            return JSONResponse({"error": "schema_not_current", "message": str(exc)},
                                status_code=503)
        except Exception as exc:
            return JSONResponse({"error": "database_unavailable",
                                 "message": f"{type(exc).__name__}: {exc}"[:500]},
                                status_code=503)
        return {"status": "ready"}

    return app
