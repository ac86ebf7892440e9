"""The board callback endpoint, served without the framework.

``POST /api/v1/boards/{name}/events/{event}`` is what every board calls many
times an hour, and the framework's routing, dependency injection and
middleware cost about three times what committing the event does. So
``corral serve`` answers that one route in the HTTP protocol
(:mod:`corral.api.protocol`), and :class:`Front` answers it as a plain ASGI
application in front of the FastAPI app (which gets every other request)
wherever that protocol is not in use.

:meth:`Callbacks.answer` is the whole endpoint once the request line is
parsed: headers, authentication, the body, the board/role check, firing and
the answer. The protocol, :class:`Front` and the FastAPI route of the same
path (which documents it in ``/openapi.json``) all call it; a test holds the
three parsers to the same answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import structlog

from corral.bootres.netboot import REIMAGE_PATH
from corral.engine.core import Engine, FireRequest
from corral.errors import (
    AuthError,
    Conflict,
    CorralError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unavailable,
    Unsupported,
)
from corral.names import EVENT_NAME, MACHINE_NAME, Role, Source
from corral.payload import MAX_PAYLOAD_BYTES, readable, readable_text
from corral.tokens import BOARD_ROLE, REIMAGE_ROLE, Principal, TokenStore
from corral.validation import describe, request_problem

log = structlog.get_logger("corral.api")

NAME = MACHINE_NAME.pattern
EVENT = EVENT_NAME.pattern
# Board progress reports are small; a history row is not a place for bulk data.
MAX_PAYLOAD = MAX_PAYLOAD_BYTES
# Every other request body (a job spec is at most 1 MiB of text, which JSON
# escaping may grow): larger ones get 413 before they are read.
MAX_BODY = 2 * 1024 * 1024
BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
MAX_IDEMPOTENCY_KEY = 200

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Answer = tuple[int, dict[str, Any], dict[str, str]]

PATH = re.compile(r"/api/v1/boards/([^/]+)/events/([^/]+)")
# Sent with every HTTP answer (docs/architecture.md#security-model): a browser
# takes no answer for another type than it says, and sends no Referer on.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
_NAME = MACHINE_NAME.regex
_EVENT = EVENT_NAME.regex


class ApiError(Exception):
    """An answer other than 200, with its JSON error document."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.extra = status, error, message, extra

    def answer(self) -> Answer:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        return self.status, readable({"error": self.error, "message": self.message,
                                      **self.extra}), headers


def invalid(where: str, message: str, *more: tuple[str, str]) -> ApiError:
    """A 422 shaped like the framework's own (:func:`corral.api.errors.invalid`):
    one detail per problem, the message all of them joined."""
    problems = ((where, message), *more)
    return ApiError(422, "invalid_request",
                    ", ".join(f"{at}: {text}" for at, text in problems),
                    details=[{"loc": at.split("."), "msg": text} for at, text in problems])


def request_problems(name: str, event: str, idempotency_key: str | None
                     ) -> list[tuple[str, str]]:
    """What pydantic finds wrong with the route's path and headers, in its
    order, said as corral.api.errors.invalid says it (the FastAPI route
    declares the same constraints; a test feeds both the same generated
    requests)."""
    problems = []

    def refuse(where: str, kind: str, value: str, **ctx: Any) -> None:
        problems.append((where, request_problem({"type": kind, "input": value, "ctx": ctx,
                                                 "msg": ""})[1]))

    if not _NAME.fullmatch(name):
        refuse("path.name", "string_pattern_mismatch", name, pattern=NAME)
    if not _EVENT.fullmatch(event):
        refuse("path.event", "string_pattern_mismatch", event, pattern=EVENT)
    if idempotency_key is not None:
        if not idempotency_key:
            refuse("header.Idempotency-Key", "string_too_short", idempotency_key, min_length=1)
        elif len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            refuse("header.Idempotency-Key", "string_too_long", idempotency_key,
                   max_length=MAX_IDEMPOTENCY_KEY)
    return problems


def corral_error_answer(exc: CorralError) -> Answer:
    """The status and document for an error the engine raised."""
    if isinstance(exc, Unavailable):
        return UNAVAILABLE
    if isinstance(exc, Forbidden):
        status, error = 403, "forbidden"
    elif isinstance(exc, AuthError):
        status, error = 401, "unauthorized"
    elif isinstance(exc, NotFound):
        status, error = 404, "not_found"
    elif isinstance(exc, InvalidRequest):
        status, error = 422, "invalid_request"
    elif isinstance(exc, Conflict):
        status, error = 409, "conflict"
    elif isinstance(exc, Unsupported):
        status, error = 501, "not_implemented"
    else:
        # Well-formed but refused (e.g. firing 'timeout' by hand).
        status, error = 409, "refused"
    body: dict[str, Any] = {"error": error, "message": readable_text(str(exc))}
    if hasattr(exc, "allowed"):
        body["error"] = "event_not_allowed"
        body["allowed_events"] = exc.allowed
    # A 401 says how to authenticate, whichever layer refused the token.
    return status, body, {"WWW-Authenticate": "Bearer"} if status == 401 else {}


# The database went away: nothing was committed; the client may retry (with the
# same Idempotency-Key).
UNAVAILABLE: Answer = (503, {"error": "unavailable",
                             "message": "the database is unavailable; retry later"},
                       {"Retry-After": "1"})
# A bug: logged with its traceback, never shown to the client.
INTERNAL: Answer = (500, {"error": "internal", "message": "internal error; see the server log"},
                    {})


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if it is one."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def too_large(limit: int = MAX_PAYLOAD, what: str = "payload") -> ApiError:
    return ApiError(413, "payload_too_large", f"the {what} is larger than {limit} bytes")


def parse_payload(body: bytes, content_type: str | None) -> dict[str, Any] | None:
    """The event's payload: nothing, ``null`` or a JSON object."""
    if not body:
        return None
    if content_type is not None:
        kind = content_type.partition(";")[0].strip().lower()
        if kind != "application/json" and not (kind.startswith("application/")
                                                and kind.endswith("+json")):
            raise ApiError(415, "unsupported_media_type",
                           f"send the payload as JSON with Content-Type: application/json "
                           f"(this request says {kind[:100] or 'nothing'!r})")
    try:
        payload = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise invalid("body", f"not valid JSON: {exc}") from None
    if payload is not None and not isinstance(payload, dict):
        raise invalid("body", f"the payload must be a JSON object, not {describe(payload)}")
    # Whether a database stores it is the engine's payload check (corral.payload).
    return payload


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class RefusalLog:
    """Logs refused callbacks (``callback_refused``: board, event, status,
    reason), so that a lab admin sees why a board's second stage was turned
    away, without letting one misbehaving board flood the log: at most
    ``burst`` lines per board per ``window`` seconds; the next window's first
    line says how many were left out (``suppressed``)."""

    def __init__(self, *, burst: int = 5, window: float = 60.0, boards: int = 10_000,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.window, self.boards, self.timer = burst, window, boards, timer
        # board -> [window start, lines logged, lines left out]
        self._seen: dict[str, list[float]] = {}

    def note(self, board: str, event: str, status: int, reason: str) -> None:
        now = self.timer()
        entry = self._seen.get(board)
        suppressed = 0
        if entry is None or now - entry[0] >= self.window:
            suppressed = int(entry[2]) if entry is not None else 0
            if entry is None and len(self._seen) >= self.boards:
                self._seen.clear()  # names are the client's to choose: stay bounded
            entry = self._seen[board] = [now, 0, 0]
        if entry[1] >= self.burst:
            entry[2] += 1
            return
        entry[1] += 1
        log.warning("callback_refused", board=board[:200], _event=event[:64], status=status,
                    reason=reason[:500], **({"suppressed": suppressed} if suppressed else {}))


class Callbacks:
    """The endpoint itself, whichever parser read the request."""

    def __init__(self, engine: Engine, tokens: TokenStore,
                 refusals: RefusalLog | None = None) -> None:
        self.engine = engine
        self.tokens = tokens
        self.refusals = refusals or RefusalLog()

    async def principal(self, token: str | None) -> Principal:
        """Who presented ``token`` (from an ``Authorization: Bearer`` header)."""
        # On the event loop: a cached token costs no thread hop; a new one is
        # checked against the database in a worker thread.
        if token is None:
            raise ApiError(401, "unauthorized", "an Authorization: Bearer token is required")
        found = self.tokens.cached(token) or await asyncio.to_thread(self.tokens.verify, token)
        if found is None:
            raise ApiError(401, "unauthorized", "the token is not valid")
        return found

    async def respond(self, name: str, event: str, who: Principal,
                      payload: dict[str, Any] | None, idempotency_key: str | None
                      ) -> dict[str, Any]:
        """Fire the event for its board; the transition document once committed.

        Raises:
            ApiError: the token may not fire events at this board.
            CorralError: the engine refused the event (see :func:`corral_error_answer`).
        """
        only_in = None
        if who.role in (BOARD_ROLE, REIMAGE_ROLE):
            if who.board != name:
                raise ApiError(403, "forbidden", f"this token belongs to board {who.board!r}")
            source = Source.CALLBACK
            if who.role == REIMAGE_ROLE:
                # The second stage's events (by: board), while it is reimaged.
                only_in = REIMAGE_PATH
        elif who.at_least(Role.OPERATOR):
            source = Source.OPERATOR
        # The transition's `by` decides what this role may fire (the engine checks).
        else:
            raise ApiError(403, "forbidden", f"token {who.name!r} is {who.role}; firing "
                           "events needs a board token or the operator role")
        result = await self.engine.fire_async(FireRequest(
            kind="board", name=name, event=event, source=source, payload=payload,
            actor=who.name, role=BOARD_ROLE if only_in else who.role, only_in=only_in,
            idempotency=(who.name, idempotency_key) if idempotency_key else None))
        return {"kind": result.kind, "name": result.name, "event": result.event,
                "from_state": result.from_state, "state": result.to_state,
                "epoch": result.epoch, "replayed": result.replayed}

    async def answer(self, name: str, event: str, headers: Iterable[tuple[bytes, bytes]],
                     read_body: Callable[[], Awaitable[bytes]]) -> Answer:
        """Answer a parsed request for the route, whoever parsed it.

        ``headers`` are the request's, names in lower case (as in an ASGI
        scope); ``read_body`` returns the body, or raises the 413 ``ApiError``
        of :func:`too_large`. It is called only once the token has passed and
        the ``Content-Length`` (if any) is within :data:`MAX_PAYLOAD`: a
        request refused for its headers is answered without waiting for its
        body (so a parser sends ``100 Continue`` only from ``read_body``).
        Refusals (4xx, 503) are logged through :class:`RefusalLog`.
        """
        answer = await self._answer(name, event, headers, read_body)
        if answer[0] != 200 and answer[0] != 500:
            self.refusals.note(name, event, answer[0], str(answer[1].get("message", "")))
        return answer

    async def _answer(self, name: str, event: str, headers: Iterable[tuple[bytes, bytes]],
                      read_body: Callable[[], Awaitable[bytes]]) -> Answer:
        try:
            authorization = idempotency_key = content_type = length = None
            for key, value in headers:
                if key == b"authorization":
                    authorization = value.decode("latin-1")
                elif key == b"idempotency-key":
                    idempotency_key = value.decode("latin-1")
                elif key == b"content-type":
                    content_type = value.decode("latin-1")
                elif key == b"content-length":
                    length = value
            # Checked in the framework's order: path, headers, token, body.
            problems = request_problems(name, event, idempotency_key)
            if problems:
                raise invalid(*problems[0], *problems[1:])
            who = await self.principal(bearer(authorization))
            # A body announced too large is refused before a byte of it is read.
            if length is not None and (not length.isdigit() or int(length) > MAX_PAYLOAD):
                raise too_large()
            payload = parse_payload(await read_body(), content_type)
            return 200, await self.respond(name, event, who, payload, idempotency_key), {}
        except ApiError as exc:
            return exc.answer()
        except CorralError as exc:
            return corral_error_answer(exc)
        except Exception:
            log.exception("callback_failed", board=name, _event=event)
            return INTERNAL

    async def serve(self, scope: Scope, receive: Receive, name: str, event: str) -> Answer:
        """Answer a raw ASGI request for the route."""
        return await self.answer(name, event, scope["headers"], lambda: _body(receive))


async def _body(receive: Receive, limit: int = MAX_PAYLOAD, what: str = "payload") -> bytes:
    """A request's whole body, read through ASGI ``receive``.

    Raises:
        ApiError: 413 once it passes ``limit`` bytes (reading stops: the answer
            is 413 whatever follows); 422 if the client leaves before the end
            (a part of a body is never taken for the whole).
    """
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise invalid("body", "the client went away before sending all of it")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit, what)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class _Body:
    """A request's body read through ASGI ``receive`` (by :func:`_body`),
    remembering whether it was read to its end."""

    __slots__ = ("complete", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.complete = False

    async def read(self) -> bytes:
        data = await _body(self.receive)
        self.complete = True
        return data


def _announces_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's headers say a body follows."""
    for key, value in headers:
        if key == b"transfer-encoding" or (key == b"content-length" and value != b"0"):
            return True
    return False


class Front:
    """The ASGI application ``corral serve`` runs: callbacks here, the rest to
    ``app``; every HTTP answer carries :data:`SECURITY_HEADERS`."""

    def __init__(self, callbacks: Callbacks, app: Callable[[Scope, Receive, Send],
                                                           Awaitable[None]]) -> None:
        self.callbacks = callbacks
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            found = PATH.fullmatch(scope["path"]) if scope["method"] == "POST" else None
            if found is not None:
                await self._callback(scope, receive, send, *found.groups())
                return
            try:
                receive = await self._screen(scope, receive)
            except ApiError as exc:
                status, document, headers = exc.answer()
                # The body is left unread: the connection cannot carry another request.
                await _send_answer(send, (status, document, headers | {"Connection": "close"}))
                return
        if scope["type"] == "http":
            send = _secured(send)
        await self.app(scope, receive, send)

    async def _callback(self, scope: Scope, receive: Receive, send: Send, name: str,
                        event: str) -> None:
        body = _Body(receive)
        try:
            answer = await self.callbacks.answer(name, event, scope["headers"], body.read)
        except Exception:
            log.exception("callback_failed", board=name, _event=event)
            answer = INTERNAL
        if answer[0] == 413 or (not body.complete and _announces_body(scope["headers"])):
            # Refused before its body was read (a 401 from the headers alone)
            # or for its size: the server would otherwise read the rest to
            # reach the next request, however long it is.
            answer = (answer[0], answer[1], answer[2] | {"Connection": "close"})
        await _send_answer(send, answer)

    async def _screen(self, scope: Scope, receive: Receive) -> Receive:
        """Refuse a request with a body before the framework reads it: one to
        the API without a valid token gets 401, then one larger than
        :data:`MAX_BODY` 413, before its body is read. Returns how the
        application receives the (now read, bounded) body."""
        length = None
        authorization = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"authorization":
                authorization = value.decode("latin-1")
        if scope["path"].startswith("/api/"):
            # Every API route needs a token; checking it first means nobody
            # without one makes the server read or parse a body.
            await self.callbacks.principal(bearer(authorization))
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise too_large(MAX_BODY, "request body")
        pending: list[Message] = [{"type": "http.request", "more_body": False,
                                   "body": await _body(receive, MAX_BODY, "request body")}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()
        return replay

    def __getattr__(self, name: str) -> Any:
        # The FastAPI app's attributes (openapi(), routes, state) stay reachable.
        return getattr(self.app, name)


def _secured(send: Send) -> Send:
    """``send``, adding :data:`SECURITY_HEADERS` to the start of the answer."""
    async def secured(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
        await send(message)
    return secured


async def _send_answer(send: Send, answer: Answer) -> None:
    status, fields, data = encode_answer(*answer)
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": data})


def _compact_json_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"))``, without building the C
    encoder again for every call (as ``JSONEncoder.encode`` does): 1.9 µs
    instead of 5.6 µs for a transition document, on every callback."""
    encoder = json.JSONEncoder(separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return encoder.encode
    # The arguments JSONEncoder.iterencode passes, with no circular-reference
    # check: answers are built here, from plain values.
    c_encoder = make(None, encoder.default, json.encoder.encode_basestring_ascii, None,
                     ":", ",", False, False, True)

    def encode(value: Any) -> str:
        return "".join(c_encoder(value, 0))
    return encode


encode_json = _compact_json_encoder()


def encode_answer(status: int, document: dict[str, Any], headers: dict[str, str]
                  ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An answer as HTTP: its status, its header fields and its body."""
    data = encode_json(document).encode()
    raw = [(b"content-type", b"application/json"),
           (b"content-length", str(len(data)).encode()), *SECURITY_HEADERS]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return status, raw, data
