"""Every refusal the operator API sends, as one JSON shape.

An error is ``{"error", "message", ...}`` with a status that says what to
do: 401 (no or bad token), 403 (token not allowed here), 404 (no such
machine), 409 (the machine's state refuses it; ``allowed_events`` lists what
it accepts), 422 (malformed request), 503 (the database is away; retry).
The engine's errors are mapped by :func:`corral.api.callbacks.corral_error_answer`,
which the callback fast path uses too, so both paths answer alike;
:func:`install` registers the handlers that apply it (and the framework's own
refusals) on the FastAPI app, and :data:`ERRORS` documents them in
``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.api.callbacks import INTERNAL, ApiError, corral_error_answer
from corral.api.models import ErrorOut
from corral.errors import CorralError
from corral.payload import readable
from corral.validation import request_problem

log = structlog.get_logger("corral.api")

# The refusals every operator route may answer, for ``responses=`` (OpenAPI).
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
# The framework's statuses, by the error name the JSON document gives them.
_HTTP_ERRORS = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 422: "invalid_request"}


def install(app: FastAPI, routers: Iterable[APIRouter]) -> None:
    """Answer every exception a route raises with the error document;
    ``routers`` are the app's, whose methods a 405 lists."""
    app.state.route_methods = [(route.path_regex, route.methods or set())
                               for router in routers for route in router.routes
                               if isinstance(route, APIRoute)]
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
    app.add_exception_handler(CorralError, corral_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal)
    app.add_exception_handler(RecursionError, too_deep)  # type: ignore[arg-type]


def _answer(status: int, body: dict[str, Any], headers: dict[str, str]) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers or None)


def api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _answer(*exc.answer())


def corral_error(_: Request, exc: CorralError) -> JSONResponse:
    return _answer(*corral_error_answer(exc))


def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # A body that cannot even be parsed is a malformed request like any other.
    status = 422 if exc.status_code == 400 else exc.status_code
    if isinstance(exc.__cause__, RecursionError):
        return too_deep(request, exc.__cause__)
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 405:
        # Starlette names only the first route matching the path; a path
        # served by several routes (GET /pools/{name}, POST /pools/fleet...)
        # allows the methods of all of them.
        headers["Allow"] = ", ".join(sorted({
            method for path, methods in request.app.state.route_methods
            if path.match(request.url.path) for method in methods}))
    return JSONResponse({"error": _HTTP_ERRORS.get(status, "http_error"),
                         "message": str(exc.detail)}, status_code=status,
                        headers=headers or None)


def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Said as corral.validation says a file's problems: "must be a whole
    # number, not 'x'", "unknown key 'colour' (allowed: ...)", never
    # pydantic's "Input should be a valid dictionary" or a type's name.
    inputs = _inputs(request)
    details = []
    for error in exc.errors():
        source, *inside = error.get("loc") or ("body",)
        if source == "body":
            schema, doc, prefix = inputs.get("body"), getattr(exc, "body", None), []
        elif inside:
            name, *inside = inside
            schema, doc, prefix = inputs.get(str(source), {}).get(name), None, [name]
        else:
            schema, doc, prefix = None, None, []
        where, message = request_problem({**error, "loc": tuple(inside)}, schema, doc,
                                         hidden=SECRET_FIELDS)
        details.append({"loc": [source, *prefix, *where], "msg": message})
    # Locations may hold the client's own keys: made valid text first.
    details = readable(details)
    text = ", ".join(".".join(str(p) for p in d["loc"]) + ": " + d["msg"] for d in details)
    return JSONResponse({"error": "invalid_request", "message": text or "invalid request",
                         "details": details}, status_code=422)


# Request fields whose values a refusal never repeats.
SECRET_FIELDS = frozenset({"secret", "password", "token"})


def _inputs(request: Request) -> dict[str, Any]:
    """The route's declared inputs: ``{"body": its type, "query": {name:
    type}, "path": ..., "header": ...}`` (empty off a route)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return {}
    inputs: dict[str, Any] = {"query": {}, "path": {}, "header": {}, "cookie": {}}
    pending = [route.dependant]
    while pending:  # the route's parameters and its dependencies'
        dependant = pending.pop()
        pending.extend(dependant.dependencies)
        for source, fields in (("query", dependant.query_params),
                               ("path", dependant.path_params),
                               ("header", dependant.header_params),
                               ("cookie", dependant.cookie_params)):
            inputs[source].update({f.alias: f.field_info.annotation for f in fields})
    if route.body_field is not None:
        inputs["body"] = route.body_field.field_info.annotation
    return inputs


def internal(_: Request, exc: Exception) -> JSONResponse:
    # A bug: the client gets the error shape, the log the traceback.
    log.error("request_failed", exc_info=exc)
    return _answer(*INTERNAL)


def too_deep(_: Request, exc: RecursionError) -> JSONResponse:
    # Only input nests this deeply (the payload check allows 32 levels).
    return JSONResponse({"error": "invalid_request",
                         "message": "body: nested too deeply to be read"}, status_code=422)
