"""The HTTP API: board callbacks, the operator API, metrics and health.

Board callbacks, the hot path, are answered in :mod:`corral.api.callbacks`
without the framework; the operator endpoints are plain functions run in a
thread pool. Concurrent events reach the engine together and share
transactions through group commit.
A response is sent only after the transaction holding its event has
committed. Every error is JSON ``{"error", "message", ...}`` with a status
that says what to do: 401 (no or bad token), 403 (token not allowed here), 404
(no such board), 409 (the board's state refuses it; ``allowed_events`` lists
what it accepts), 422 (malformed request).

No ``from __future__ import annotations`` here: FastAPI reads the endpoint
annotations at run time, and they name dependencies defined in ``create_app``.
"""


import asyncio
import ipaddress
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path as FsPath
from typing import Annotated, Any

import anyio.to_thread
import structlog
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral import __version__
from corral.api.callbacks import (
    EVENT,
    INTERNAL,
    MAX_IDEMPOTENCY_KEY,
    MAX_PAYLOAD,
    NAME,
    ApiError,
    Callbacks,
    Front,
    corral_error_answer,
)
from corral.bootres.netboot import served_ipxe, served_object
from corral.config import parse_networks
from corral.engine.core import Engine, FireResult
from corral.errors import CorralError, SchemaNotCurrent, Unavailable
from corral.jobs import versions
from corral.jobs.service import JobService
from corral.payload import readable
from corral.pools import PoolService
from corral.stream import HistoryTail, event_frames
from corral.tokens import Principal, TokenStore

log = structlog.get_logger("corral.api")
# Machines per page of a list (the default, and the most a client may ask for).
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000

# ------------------------------------------------------------------ documents


JOB = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class FleetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fabric: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    count: int = Field(ge=1, le=1000)


class AcquireIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_run_id: str = Field(pattern=JOB)
    pool: str | None = Field(default=None, pattern=NAME,
                             description="This pool; without it, any free ones.")
    count: int = Field(default=1, ge=1, le=1000)
    fabric: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_run_id: str = Field(pattern=JOB)
    reason: str | None = Field(default=None, max_length=2000)


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_run_id: str = Field(pattern=JOB)
    os_version: str = Field(min_length=1, max_length=200, pattern=r"^\S+$")
    ttl_seconds: int | None = Field(default=None, ge=1, le=30 * 86400)


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = Field(min_length=1, max_length=1 << 20,
                      description="The job spec as YAML or JSON text (apiVersion corral/v1).")


class MaizeSnapshot(BaseModel):
    release: str


class MaizeIn(BaseModel):
    snapshot: MaizeSnapshot


class SubmittedOut(BaseModel):
    name: str = Field(description="The job's id.")
    state: str


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=2000)


class SignalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")


class SpecOut(BaseModel):
    name: str
    api_version: str
    format: str
    text: str = Field(description="The spec as submitted, or converted to api_version.")


class AssignmentOut(BaseModel):
    pool: str
    job_run_id: str
    assigned_at: datetime


class HeldOut(BaseModel):
    job_run_id: str
    pools: list[str]
    new: list[str] = Field(description="Pools taken by this call (the others the job "
                                       "already held).")


class ErrorOut(BaseModel):
    error: str
    message: str
    allowed_events: list[str] | None = None
    details: list[dict[str, Any]] | None = Field(
        default=None, description="For 422: each problem with its location.")


class TransitionOut(BaseModel):
    kind: str
    name: str
    event: str
    from_state: str
    state: str
    epoch: int
    replayed: bool = Field(description="True when an Idempotency-Key repeated an earlier "
                                        "request and this is its first response.")


class MachineOut(BaseModel):
    name: str
    state: str
    failed: bool
    state_entered_at: datetime
    deadline: datetime | None
    counters: dict[str, int]
    epoch: int
    attrs: dict[str, Any]
    vars: dict[str, Any] = Field(description="Values events stored for later states (a "
                                             "pool's override version and TTL).")
    allowed_events: list[str] = Field(description="The events the state accepts that this "
                                                  "token may fire.")
    accepted_events: dict[str, list[str]] = Field(
        description="Every event the state accepts, with who may fire it (board, operator, "
                    "admin, operation, timeout).")


class JobOut(MachineOut):
    job_name: str
    priority: int
    fabric: str | None
    api_version: str
    submitted_at: datetime
    submitted_by: str | None
    pool: str | None = Field(description="The pool the scheduler gave the job.")
    current: dict[str, Any] | None = Field(
        description="The action under way: stage, action, type, attempt.")
    failure_comment: str | None = Field(description="Why the job ended incomplete or "
                                                    "canceled.")
    finished_at: datetime | None


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
                       (404, "No such board, pool or state."),
                       (409, "The machine's current state (or a pool's holder) refuses "
                             "this."),
                       (422, "The request is malformed."),
                       (503, "The database is unavailable; retry."))
}


# ------------------------------------------------------------------ the app


# The operator console: static files, no build step (docs/console.md).
CONSOLE = FsPath(__file__).parent / "console"


def create_app(engine: Engine, tokens: TokenStore, registry: CollectorRegistry, *,
               threads: int = 64, default_ttl: int = 43200,
               pxe_root: str | None = None, boot_networks: str = "",
               events_heartbeat: float = 15.0, events_interval: float = 0.5) -> Front:
    """The ASGI application: board callbacks answered by :class:`Front`, the rest
    by FastAPI (``Front.app``). ``threads`` bounds the operator requests handled
    at once; ``default_ttl`` is an override's TTL when a request gives none."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Endpoints run in anyio's thread pool: its size is how many events can
        # wait on one group commit together.
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        # Board callbacks share transactions on this loop (PostgreSQL).
        await engine.start_loop_group_commit()
        await anyio.to_thread.run_sync(tail.start_in, asyncio.get_running_loop())
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(tail.stop)
            await engine.stop_loop_group_commit()

    tail = HistoryTail(engine.store, interval=events_interval)

    callbacks = Callbacks(engine, tokens)
    def known_query(request: Request) -> None:
        # A query parameter the route does not take is a mistake (a typo'd
        # `?faild=true` would otherwise list every board): refused, by name.
        route = request.scope.get("route")
        if not isinstance(route, APIRoute) or not request.query_params:
            return
        allowed = {p.alias for p in route.dependant.query_params}
        for dependency in route.dependant.dependencies:
            allowed |= {p.alias for p in dependency.query_params}
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            raise RequestValidationError([{
                "loc": ("query", unknown[0]),
                "msg": f"unknown query parameter; this route takes "
                       f"{', '.join(sorted(allowed)) or 'none'}"}])

    app = FastAPI(title="Corral", version=__version__, lifespan=lifespan,
                  description="Persistent state machines for hardware test labs.",
                  dependencies=[Depends(known_query)])
    bearer = HTTPBearer(auto_error=False, description="A board or operator token.")

    def answer(status: int, body: dict[str, Any], headers: dict[str, str]) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers=headers or None)

    @app.exception_handler(ApiError)
    def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return answer(*exc.answer())

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # A body that cannot even be parsed is a malformed request like any other.
        status = 422 if exc.status_code == 400 else exc.status_code
        if isinstance(exc.__cause__, RecursionError):
            return _too_deep(request, exc.__cause__)
        error = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 422: "invalid_request"}.get(status, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if status == 405:
            # Starlette names only the first route matching the path; a path
            # served by several routes (GET /pools/{name}, POST /pools/fleet...)
            # allows the methods of all of them.
            headers["Allow"] = ", ".join(sorted({
                method for route in app.routes
                if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
                for method in route.methods or ()}))
        return JSONResponse({"error": error, "message": str(exc.detail)}, status_code=status,
                            headers=headers or None)

    @app.exception_handler(RequestValidationError)
    def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Locations may hold the client's own keys: made valid text first.
        details = readable([{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
                            for e in exc.errors()])
        where = ", ".join(".".join(str(p) for p in d["loc"]) + ": " + d["msg"]
                          for d in details)
        return JSONResponse({"error": "invalid_request", "message": where or "invalid request",
                             "details": details}, status_code=422)

    @app.exception_handler(CorralError)
    def _corral_error(_: Request, exc: CorralError) -> JSONResponse:
        return answer(*corral_error_answer(exc))

    @app.exception_handler(Exception)
    def _internal(_: Request, exc: Exception) -> JSONResponse:
        # A bug: the client gets the error shape, the log the traceback.
        log.error("request_failed", exc_info=exc)
        return answer(*INTERNAL)

    @app.exception_handler(RecursionError)
    def _too_deep(_: Request, exc: RecursionError) -> JSONResponse:
        # Only input nests this deeply (the payload check allows 32 levels).
        return JSONResponse({"error": "invalid_request",
                             "message": "body: nested too deeply to be read"},
                            status_code=422)

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        return await callbacks.principal(credentials.credentials if credentials else None)

    def role(needed: str):  # type: ignore[no-untyped-def]
        async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
            if not who.at_least(needed):
                raise ApiError(403, "forbidden",
                               f"this needs the {needed} role; token {who.name!r} is "
                               f"{who.role}")
            return who
        return check

    BoardName = Annotated[str, Path(pattern=NAME, description="The board's name.")]

    def transition_doc(result: FireResult) -> TransitionOut:
        return TransitionOut(kind=result.kind, name=result.name, event=result.event,
                             from_state=result.from_state, state=result.to_state,
                             epoch=result.epoch, replayed=result.replayed)

    # -------------------------------------------------------------- callbacks

    # Served by corral.api.callbacks.Front before the framework sees it; this
    # route documents it and answers with the same code when the app runs
    # without the front (the tests compare the two).
    @app.post("/api/v1/boards/{name}/events/{event}", response_model=None,
              responses=ERRORS | {200: {"model": TransitionOut,
                                        "description": "The transition, committed."},
                                  413: {"model": ErrorOut, "description": "The payload is "
                                        f"larger than {MAX_PAYLOAD} bytes."},
                                  415: {"model": ErrorOut, "description": "The payload is "
                                        "not sent as application/json."}},
              openapi_extra={"requestBody": {"content": {"application/json": {"schema": {
                  "anyOf": [{"type": "object", "additionalProperties": True},
                            {"type": "null"}],
                  "title": "Payload",
                  "description": "Optional JSON object recorded with the event."}}}}},
              tags=["callbacks"],
              summary="Report an event for a board (board token), or fire one (operator).")
    async def post_event(
        request: Request,
        name: BoardName,
        event: Annotated[str, Path(pattern=EVENT, description="The event's name.")],
        _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        idempotency_key: Annotated[str | None, Header(
            alias="Idempotency-Key", min_length=1, max_length=MAX_IDEMPOTENCY_KEY,
            description="Repeat a request safely: a repeated key returns the first "
                        "response without firing again.")] = None,
    ) -> JSONResponse:
        return answer(*await callbacks.serve(request.scope, request.receive, name, event))

    # -------------------------------------------------------------- operators

    def machine_routes(kind: str, plural: str) -> None:
        """The operator routes every machine kind shares: list, show, history,
        force-state and fire."""
        Name = Annotated[str, Path(pattern=NAME, description=f"The {kind}'s name.")]
        tag = plural

        @app.get(f"/api/v1/{plural}", response_model=list[MachineOut], responses=ERRORS,
                 tags=[tag], summary=f"List {plural}.", operation_id=f"list_{plural}")
        def list_machines(
            request: Request,
            response: Response,
            who: Annotated[Principal, Depends(role("viewer"))],
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

        # A job's document adds its spec's name, priority, progress and outcome.
        out: type[MachineOut] = JobOut if kind == "job" else MachineOut

        def document(name: str, role: str) -> MachineOut:
            if kind == "job":
                return JobOut(**JobService(engine).describe(name, role))
            return MachineOut(**engine.describe(engine.get(kind, name), role))

        @app.get(f"/api/v1/{plural}/{{name}}", response_model=out, responses=ERRORS,
                 tags=[tag], summary=f"Show one {kind}.", operation_id=f"show_{kind}")
        def show_machine(name: Name, who: Annotated[Principal, Depends(principal)]
                         ) -> MachineOut:
            # A board may read itself (its state tells it what to report next).
            if not ((kind == "board" and who.role == "board" and who.board == name)
                    or who.at_least("viewer")):
                raise ApiError(403, "forbidden",
                               f"token {who.name!r} may not read {kind} {name!r}")
            return document(name, who.role)

        @app.get(f"/api/v1/{plural}/{{name}}/explain", response_model=dict[str, Any],
                 responses=ERRORS, tags=[tag], summary=f"Why a {kind} is where it is.",
                 operation_id=f"explain_{kind}")
        def explain_machine(name: Name, who: Annotated[Principal, Depends(role("viewer"))]
                            ) -> dict[str, Any]:
            """The transition into its state (event, source, actor, reason, when),
            time in state against the timeout and what the timeout does, each
            counter against its limit, the last operation of each kind with its
            result, the operations queued or leased, the events the asker may
            fire, and a one-paragraph summary."""
            return engine.explain(kind, name, who.role)

        @app.get(f"/api/v1/{plural}/{{name}}/history", response_model=HistoryPage,
                 responses=ERRORS, tags=[tag], summary=f"A {kind}'s history, newest first.",
                 operation_id=f"{kind}_history")
        def machine_history(
            name: Name,
            _: Annotated[Principal, Depends(role("viewer"))],
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
            before: Annotated[int | None, Query(ge=1, le=2**63 - 1,
                                                description="Entries older than this "
                                                "id.")] = None,
        ) -> HistoryPage:
            entries = engine.history(kind, name, limit=limit, before_id=before)
            return HistoryPage(
                entries=[HistoryEntryOut(**{k: getattr(e, k)
                                            for k in HistoryEntryOut.model_fields})
                         for e in entries],
                next_before=entries[-1].id if len(entries) == limit else None)

        @app.post(f"/api/v1/{plural}/{{name}}/force-state", response_model=TransitionOut,
                  responses=ERRORS, tags=[tag], operation_id=f"force_{kind}_state",
                  summary="Force a state (running its entry operations), optionally only "
                          "from if_state.")
        def force_state(name: Name, body: ForceStateIn,
                        who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
            return transition_doc(engine.force_state(kind, name, body.state, actor=who.name,
                                                     reason=body.reason,
                                                     if_state=body.if_state, role=who.role))

        @app.post(f"/api/v1/{plural}/{{name}}/fire", response_model=TransitionOut,
                  responses=ERRORS, tags=[tag], operation_id=f"fire_{kind}_event",
                  summary=f"Fire an event at a {kind} as an operator, with a reason.")
        def fire(name: Name, body: FireIn,
                 who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
            return transition_doc(engine.fire(kind, name, body.event, source="operator",
                                              payload=body.payload, actor=who.name,
                                              reason=body.reason, role=who.role))

    for kind in engine.machines.kinds():
        machine_routes(kind, f"{kind}s")
    if "pool" in engine.machines:
        pool_routes(app, PoolService(engine, default_ttl=default_ttl), role, transition_doc)
    if "job" in engine.machines:
        job_routes(app, JobService(engine, default_ttl=default_ttl), role, transition_doc)

    @app.post("/api/v1/boards/{name}/maintenance", response_model=TransitionOut,
              responses=ERRORS, tags=["boards"], summary="Put a board in or out of maintenance.")
    def maintenance(name: BoardName, body: MaintenanceIn,
                    who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
        event = "maintenance" if body.on else "leave_maintenance"
        return transition_doc(engine.fire("board", name, event, source="operator",
                                          actor=who.name, reason=body.reason, role=who.role))

    @app.post("/api/v1/boards/{name}/retire", response_model=TransitionOut, responses=ERRORS,
              tags=["boards"], summary="Retire a board for good (admin).")
    def retire(name: BoardName, body: RetireIn,
               who: Annotated[Principal, Depends(role("admin"))]) -> TransitionOut:
        return transition_doc(engine.fire("board", name, "retire", source="operator",
                                          actor=who.name, reason=body.reason, role=who.role))

    # -------------------------------------------------------------- netboot

    # What firmware fetches over HTTP (iPXE, UEFI HTTP boot): no token, like
    # TFTP; see docs/lab.md for what the provisioning network can read.
    mac_pattern = "^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$"
    not_configured = ApiError(404, "not_found", "netboot is not configured here (pxe_root)")
    allowed_networks = parse_networks(boot_networks)

    def boot_client(request: Request) -> None:
        """Only the provisioning network, where boot_networks says which it is."""
        if not allowed_networks:
            return
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or not any(address in n for n in allowed_networks):
            raise ApiError(403, "forbidden", f"{host or 'this client'} is not on a network "
                           "allowed to netboot (boot_networks)")

    @app.get("/boot/ipxe/{mac}", tags=["netboot"], response_class=Response,
             responses={403: {"model": ErrorOut, "description": "Not from boot_networks."},
                        404: {"model": ErrorOut, "description": "No script for this MAC."}},
             summary="A board's iPXE script, by its MAC (aa:bb:cc:dd:ee:ff).")
    def ipxe_script(mac: Annotated[str, Path(max_length=17, pattern=mac_pattern)],
                    _: Annotated[None, Depends(boot_client)]) -> Response:
        if not pxe_root:
            raise not_configured
        script = served_ipxe(FsPath(pxe_root), mac)
        if script is None:
            raise ApiError(404, "not_found", f"no iPXE script for {mac}")
        return Response(script, media_type="text/plain; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    @app.get("/boot/objects/{sha256}", tags=["netboot"], response_class=FileResponse,
             responses={403: {"model": ErrorOut, "description": "Not from boot_networks."},
                        404: {"model": ErrorOut, "description": "No such boot object."}},
             summary="A kernel, initrd or image a board's configuration names.")
    def boot_object(sha256: Annotated[str, Path(pattern="^[0-9a-f]{64}$")],
                    _: Annotated[None, Depends(boot_client)]) -> FileResponse:
        if not pxe_root:
            raise not_configured
        path = served_object(FsPath(pxe_root), sha256)
        if path is None:
            raise ApiError(404, "not_found", f"no boot object {sha256}")
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"Cache-Control": "public, max-age=31536000, immutable"})

    # -------------------------------------------------------------- monitoring

    # -------------------------------------------------------------- console

    @app.get("/api/v1/whoami", tags=["tokens"], responses=ERRORS,
             summary="The token's name and role.", operation_id="whoami")
    def whoami(who: Annotated[Principal, Depends(principal)]) -> dict[str, str]:
        return {"name": who.name, "role": who.role}

    @app.get("/api/v1/definitions/{kind}", tags=["definitions"], responses=ERRORS,
             summary="A machine kind's definition, with the machines in each state.",
             operation_id="show_definition")
    def show_definition(kind: Annotated[str, Path(pattern=NAME)],
                        _: Annotated[Principal, Depends(role("viewer"))]) -> dict[str, Any]:
        """States (description, failed, terminal, timeout and what it does,
        counter, how many machines are in it) and transitions (trigger,
        sources, destination, who fires it), as loaded from
        ``statemachines/``: what the console draws its diagrams from."""
        if kind not in engine.machines:
            raise ApiError(404, "not_found", f"no machine kind {kind!r}; kinds: "
                           f"{', '.join(engine.machines.kinds())}")
        definition = engine.machines[kind].definition
        counts, _age = engine.state_counts(max_age=30)
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

    class WebhookIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        url: str = Field(description="Where deliveries are POSTed (http or https).")
        secret: str = Field(min_length=16, description="The HMAC-SHA256 key deliveries are "
                                                       "signed with (never shown again).")
        name: str | None = Field(None, pattern=NAME, description="Default: hook-N.")
        filters: dict[str, list[str]] = Field(default_factory=dict, description=(
            "kind, name, state, event, source: each a list of alternatives."))
        from_start: bool = Field(False, description="Deliver every event kept, not only "
                                                    "new ones.")

    @app.post("/api/v1/webhooks", tags=["webhooks"], responses=ERRORS,
              summary="Subscribe a URL to matching events.", operation_id="add_webhook")
    def add_webhook(body: WebhookIn, _: Annotated[Principal, Depends(role("admin"))]
                    ) -> dict[str, Any]:
        from corral.webhooks import add_subscription

        return add_subscription(engine, name=body.name, url=body.url, filters=body.filters,
                                secret=body.secret, from_start=body.from_start)

    @app.get("/api/v1/webhooks", tags=["webhooks"], responses=ERRORS,
             summary="Subscriptions: status, cursor, last error (never the secret).",
             operation_id="list_webhooks")
    def list_webhooks(_: Annotated[Principal, Depends(role("viewer"))]
                      ) -> list[dict[str, Any]]:
        with engine.store.unit() as tx:
            hooks = tx.list_webhooks()
        return [{k: (v.isoformat() if isinstance(v, datetime) else v)
                 for k, v in hook.items() if k not in ("id", "lease_owner", "lease_until")}
                for hook in hooks]

    @app.delete("/api/v1/webhooks/{name}", tags=["webhooks"], responses=ERRORS,
                summary="Delete a subscription.", operation_id="remove_webhook")
    def remove_webhook(name: Annotated[str, Path(pattern=NAME)],
                       _: Annotated[Principal, Depends(role("admin"))]) -> dict[str, str]:
        with engine.store.unit() as tx:
            if not tx.remove_webhook(name):
                raise ApiError(404, "not_found", f"no webhook {name!r}")
        return {"removed": name}

    @app.get("/", include_in_schema=False)
    def console_page() -> FileResponse:
        return FileResponse(CONSOLE / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/console/{asset}", include_in_schema=False)
    def console_asset(asset: Annotated[str, Path(pattern=r"^[a-z]+\.(js|css)$")]
                      ) -> FileResponse:
        path = CONSOLE / asset
        if not path.is_file():
            raise ApiError(404, "not_found", f"no console asset {asset!r}")
        kind = "text/javascript" if asset.endswith(".js") else "text/css"
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})

    # -------------------------------------------------------------- events

    @app.get("/api/v1/events", tags=["events"], response_class=StreamingResponse,
             responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                        "description": "Server-Sent Events."}},
             summary="Every history row as it commits, in commit order (Server-Sent "
                     "Events).", operation_id="stream_events")
    async def stream_events(
        _: Annotated[Principal, Depends(role("viewer"))],
        after: Annotated[int | None, Query(ge=0, le=10**18, description=(
            "Start after this history id (0: from the oldest kept row); without it, "
            "from now. Last-Event-ID, when sent, wins."))] = None,
        kind: Annotated[list[str], Query(description="Only these machine kinds.")] = [],  # noqa: B006
        name: Annotated[list[str], Query(description="Only these machines.")] = [],  # noqa: B006
        state: Annotated[list[str], Query(description="Only rows entering these states.")
                         ] = [],  # noqa: B006
        event: Annotated[list[str], Query(description="Only these events.")] = [],  # noqa: B006
        source: Annotated[list[str], Query(description=(
            "Only these sources: callback, timeout, operation, operator."))] = [],  # noqa: B006
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """Each event's SSE ``id`` is its history id and its ``data`` the row
        as JSON (kind, name, from_state, to_state, event, source, actor,
        reason, at, payload). A reconnecting client sends ``Last-Event-ID`` and
        resumes exactly after that row: nothing lost, nothing twice. A
        ``: heartbeat`` comment comes after 15 s of silence."""
        if tail.unsupported:
            raise ApiError(501, "not_implemented", tail.unsupported)
        if not tail.ready:
            raise Unavailable("the event stream waits for the database; retry later")
        start = after
        if last_event_id is not None and last_event_id.strip():
            if not re.fullmatch(r"[0-9]{1,18}", last_event_id.strip()):
                raise RequestValidationError([{
                    "loc": ("header", "Last-Event-ID"),
                    "msg": "must be a history id (a whole number), as the stream sent it"}])
            start = int(last_event_id.strip())
        if start is None:
            start = tail.horizon
        filters = {"kind": kind, "name": name, "state": state, "event": event,
                   "source": source}
        return StreamingResponse(
            event_frames(tail, after=start, filters=filters, heartbeat=events_heartbeat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

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
            with engine.store.unit() as tx:
                tx.ping()
            engine.store.require_current()
        except SchemaNotCurrent as exc:
            return JSONResponse({"error": "schema_not_current", "message": str(exc)},
                                status_code=503)
        except Exception as exc:
            return JSONResponse({"error": "database_unavailable",
                                 "message": f"{type(exc).__name__}: {exc}"[:500]},
                                status_code=503)
        return {"status": "ready"}

    return Front(callbacks, app)


def pool_routes(app: FastAPI, pools: PoolService, role: Any, transition_doc: Any) -> None:
    """Fleets, assignments and overrides (operator role; creating a fleet: admin)."""
    PoolName = Annotated[str, Path(pattern=NAME, description="The pool's name.")]

    def held_doc(held: Any) -> HeldOut:
        return HeldOut(job_run_id=held.job_run_id, pools=list(held.pools), new=list(held.new))

    @app.post("/api/v1/pool-fleets", response_model=list[str], responses=ERRORS,
              tags=["pools"], summary="Create testbed-cert-pool-{1..count}-{fabric} (admin); "
                                      "returns the pools created.")
    def create_fleet(body: FleetIn,
                     who: Annotated[Principal, Depends(role("admin"))]) -> list[str]:
        return [r.name for r in pools.create_fleet(body.fabric, body.count, actor=who.name)]

    @app.get("/api/v1/pool-assignments", response_model=list[AssignmentOut],
             responses=ERRORS, tags=["pools"], summary="Which job holds which pool.")
    def assignments(
        _: Annotated[Principal, Depends(role("viewer"))],
        job_run_id: Annotated[str | None, Query(pattern=JOB)] = None,
    ) -> list[AssignmentOut]:
        return [AssignmentOut(pool=a.pool, job_run_id=a.job_run_id, assigned_at=a.assigned_at)
                for a in pools.assignments(job_run_id)]

    @app.post("/api/v1/pool-assignments", response_model=HeldOut, responses=ERRORS,
              tags=["pools"], summary="Take a pool (or any free ones) for a job.")
    def acquire(body: AcquireIn,
                who: Annotated[Principal, Depends(role("operator"))]) -> HeldOut:
        if body.pool is not None:
            return held_doc(pools.acquire(body.job_run_id, body.pool, actor=who.name))
        return held_doc(pools.acquire_any(body.job_run_id, count=body.count,
                                          fabric=body.fabric, actor=who.name))

    @app.post("/api/v1/pool-assignments/release", response_model=list[str],
              responses=ERRORS, tags=["pools"],
              summary="Free every pool a job holds; returns them.")
    def release(body: ReleaseIn,
                who: Annotated[Principal, Depends(role("operator"))]) -> list[str]:
        return pools.release_all(body.job_run_id, actor=who.name, reason=body.reason)

    @app.post("/api/v1/pools/{name}/override", response_model=TransitionOut,
              responses=ERRORS, tags=["pools"],
              summary="Start an OS override of a pool for a job (taking the pool if free).")
    def override(name: PoolName, body: OverrideIn,
                 who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
        return transition_doc(pools.override(name, job_run_id=body.job_run_id,
                                             os_version=body.os_version,
                                             ttl_seconds=body.ttl_seconds, actor=who.name))


def job_routes(app: FastAPI, jobs: JobService, role: Any, transition_doc: Any) -> None:
    """Submitting, canceling and signalling jobs (operator role)."""
    JobName = Annotated[str, Path(pattern=NAME, description="The job's id.")]

    def submitted(result: FireResult) -> SubmittedOut:
        return SubmittedOut(name=result.name, state=result.to_state)

    @app.post("/api/v1/jobs", response_model=SubmittedOut, responses=ERRORS, tags=["jobs"],
              summary="Submit a job spec; answers its id once the schema check passed.")
    def submit(body: SubmitIn,
               who: Annotated[Principal, Depends(role("operator"))]) -> SubmittedOut:
        return submitted(jobs.submit(body.spec, actor=who.name))

    @app.post("/api/v1/maize-snapshots", response_model=SubmittedOut, responses=ERRORS,
              tags=["jobs"], summary="Submit a Maize snapshot as an OS override job.")
    def submit_maize(
        body: MaizeIn, who: Annotated[Principal, Depends(role("operator"))],
        fabric: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = None,
    ) -> SubmittedOut:
        return submitted(jobs.submit_maize(body.model_dump_json(), actor=who.name,
                                           fabric=fabric))

    @app.get("/api/v1/jobs/{name}/spec", response_model=SpecOut, responses=ERRORS,
             tags=["jobs"], summary="The spec as submitted, or converted to another version.")
    def spec(name: JobName, _: Annotated[Principal, Depends(role("viewer"))],
             api_version: Annotated[str | None, Query(max_length=32)] = None) -> SpecOut:
        record = jobs.record(name)
        if api_version is None or api_version == record["api_version"]:
            return SpecOut(name=name, api_version=record["api_version"],
                           format=record["format"], text=record["spec_text"])
        doc = versions.convert(jobs.spec(name), api_version)
        return SpecOut(name=name, api_version=api_version, format="yaml",
                       text=versions.dumps(doc, "yaml"))

    @app.post("/api/v1/jobs/{name}/cancel", response_model=TransitionOut, responses=ERRORS,
              tags=["jobs"], summary="Cancel a job that has not ended; its pools are released.")
    def cancel(name: JobName, body: CancelIn,
               who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
        return transition_doc(jobs.cancel(name, actor=who.name, reason=body.reason))

    @app.post("/api/v1/jobs/{name}/signal", response_model=TransitionOut, responses=ERRORS,
              tags=["jobs"], summary="Send the event a waitForEventAction waits for.")
    def signal(name: JobName, body: SignalIn,
               who: Annotated[Principal, Depends(role("operator"))]) -> TransitionOut:
        return transition_doc(jobs.signal(name, body.event, actor=who.name))
