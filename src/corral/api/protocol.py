"""The board callback route answered in the HTTP protocol itself.

Every board calls ``POST /api/v1/boards/{name}/events/{event}`` many times an
hour, and one API process is bound by the interpreter, not by the database:
of what it spends on a callback answered through ASGI, a quarter went to the
ASGI plumbing around it (the request cycle object, its event, the scope, the
two ``send`` messages) and to writing the response in two system calls.

:class:`CallbackProtocol` is uvicorn's httptools protocol with that one route
taken out of ASGI: once the request line and headers name the route, the
request becomes an :class:`_Exchange` instead of an ASGI request cycle, its
body is collected (up to :data:`MAX_PAYLOAD`), and :meth:`Callbacks.answer`
answers it; the response goes out in one write. Everything else (the
operator API, metrics, a callback whose path is percent-encoded) takes
uvicorn's own path to the FastAPI app unchanged.

An exchange stands in the connection's place of uvicorn's request cycle
(``self.cycle``), so keep-alive, HTTP/1.1 pipelining (responses in request
order, whatever route each request took), graceful shutdown (which waits for
answers in flight) and ``Expect: 100-continue`` keep working as uvicorn does
them. It relies on the protocol's hooks, so :func:`callback_protocol` uses it
only on the uvicorn releases it was written against, and the acceptance tests
run every callback through it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httptools
import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from corral.api.callbacks import (
    INTERNAL,
    MAX_PAYLOAD,
    Callbacks,
    encode_answer,
    too_large,
)

log = structlog.get_logger("corral.api")

PATH = re.compile(rb"/api/v1/boards/([^/]+)/events/([^/]+)")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
             b"x-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\n"
             b"connection: close\r\ncontent-length: 83\r\n\r\n"
             b'{"error":"request_timeout","message":"the request was not sent in time; try again"}')
HEADER_TIMEOUT = 10.0
"""Seconds a client has, from connecting (or from the first byte of a request on
a kept-alive connection), to send a request's line and headers."""
BODY_TIMEOUT = 30.0
"""Seconds a client has, once the headers are in, to send the whole body."""
# The uvicorn releases (major, minor) whose protocol hooks this module was
# checked against: the acceptance tests pass through it on each.
SUPPORTED_UVICORN = ((0, 54), (0, 54))


class _Exchange:
    """One callback request on a connection, in place of uvicorn's request cycle.

    The attribute names uvicorn's protocol reads on ``self.cycle``
    (``response_complete``, ``disconnected``, ``keep_alive``) mean what they mean
    there.
    """

    __slots__ = ("body", "complete", "disconnected", "event", "expect_continue",
                 "headers", "keep_alive", "name", "response_complete", "size", "started",
                 "turn")

    def __init__(self, name: str, event: str, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool, expect_continue: bool) -> None:
        self.name = name
        self.event = event
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.body = bytearray()
        self.size = 0
        self.complete = False  # the whole body has arrived
        self.turn = False  # the requests before it on the connection are answered
        self.started = False
        self.response_complete = False
        self.disconnected = False

    @property
    def too_large(self) -> bool:
        return self.size > MAX_PAYLOAD

    async def read_body(self) -> bytes:
        if self.too_large:
            raise too_large()
        return bytes(self.body)


def callback_protocol(callbacks: Callbacks, *, header_timeout: float = HEADER_TIMEOUT,
                      body_timeout: float = BODY_TIMEOUT) -> type[asyncio.Protocol] | None:
    """The protocol class to give uvicorn (``Config(http=...)``) so that it answers
    the callback route with ``callbacks`` and drops clients that send a request
    too slowly; None on a uvicorn release this module was not written against
    (its own protocol then serves the route through
    :class:`corral.api.callbacks.Front`, at some cost in speed, and without the
    read timeouts). The project pins uvicorn to that release."""
    version = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])
    if not SUPPORTED_UVICORN[0] <= version <= SUPPORTED_UVICORN[1]:
        log.warning("callback_protocol_unsupported", uvicorn=uvicorn.__version__,
                    note="callbacks are answered through ASGI, without read timeouts")
        return None
    return type("BoundCallbackProtocol", (CallbackProtocol,), {
        "callbacks": callbacks, "header_timeout": header_timeout,
        "body_timeout": body_timeout})


class CallbackProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering the callback route itself (with
    the class attribute ``callbacks``, set by :func:`callback_protocol`).

    It also bounds how long a client may take to send a request: its headers
    within ``header_timeout`` seconds, its body within ``body_timeout`` more.
    A client that is too slow gets 408 and the connection is closed (a slow
    request an application is already reading is disconnected instead), so
    a handful of clients trickling bytes cannot hold connections for ever.
    """

    callbacks: Callbacks
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    _read_timer: asyncio.TimerHandle | None = None
    # A request has begun and its headers are not all in yet.
    _in_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_timer(self.header_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._arm_read_timer(self.header_timeout)

    def _read_body_in_time(self, body_pending: bool) -> None:
        """A request's turn has come (a pipelined one waits, unread, for the
        requests before it): its body must now arrive within ``body_timeout``."""
        if body_pending:
            self._arm_read_timer(self.body_timeout)

    def _arm_read_timer(self, seconds: float) -> None:
        self._cancel_read_timer()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        # The request whose body is awaited, unless its headers are not in yet.
        current = None if self._in_headers else self.cycle
        log.info("http_request_timeout", client=self.client[0] if self.client else None,
                 headers_read=current is not None)
        if current is not None:
            if current.response_complete:
                # Answered already (a 413): the rest of its body is not awaited.
                self.transport.close()
                return
            if current.started if type(current) is _Exchange else getattr(
                    current, "response_started", False):
                # An answer is on its way: it ends the connection.
                current.keep_alive = False
                return
            # The application reading the body sees a disconnect; nothing it
            # sends afterwards is written.
            current.response_complete = True
            current.disconnected = True
        self.transport.write(TIMED_OUT)
        self.transport.close()

    # ---------------------------------------------------- parser callbacks

    def on_headers_complete(self) -> None:
        # The body timer starts when the request's turn comes (_take_turn,
        # _start_asgi_task).
        self._in_headers = False
        self._cancel_read_timer()
        exchange = self._exchange()
        if exchange is None:
            super().on_headers_complete()
            return
        previous = self.cycle
        self.cycle = exchange  # type: ignore[assignment]
        if previous is None or previous.response_complete:
            self._take_turn(exchange)
        else:
            # Pipelined behind a request not yet answered: uvicorn starts it
            # (through _start_asgi_task) once that one is.
            self.flow.pause_reading()
            self.pipeline.appendleft((exchange, None))  # type: ignore[arg-type]

    def on_body(self, body: bytes) -> None:
        exchange = self.cycle
        if type(exchange) is not _Exchange:
            super().on_body(body)
            return
        if exchange.started:
            return  # answered already (413): the rest is read and dropped
        exchange.size += len(body)
        if exchange.too_large:
            exchange.body.clear()
            if exchange.turn:
                self._start(exchange)
        else:
            exchange.body += body

    def on_message_complete(self) -> None:
        self._cancel_read_timer()
        exchange = self.cycle
        if type(exchange) is not _Exchange:
            super().on_message_complete()
            return
        exchange.complete = True
        if exchange.turn and not exchange.started:
            self._start(exchange)

    # ---------------------------------------------------- uvicorn's hooks

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if type(cycle) is _Exchange:
            self._take_turn(cycle)
        else:
            self._read_body_in_time(cycle.more_body)
            super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timer()
        exchange = self.cycle
        if type(exchange) is _Exchange:
            # An answer in flight still commits its event (the board may retry
            # with its Idempotency-Key); it is just not written.
            exchange.disconnected = not exchange.response_complete
            self.cycle = None  # type: ignore[assignment]
        super().connection_lost(exc)

    # ---------------------------------------------------- the exchange

    def _exchange(self) -> _Exchange | None:
        """An exchange if this request is a callback, else None."""
        parser = self.parser
        if parser.get_method() != b"POST" or parser.should_upgrade():
            return None
        path = httptools.parse_url(self.url).path
        found = PATH.fullmatch(path)
        # A percent-encoded path is left to uvicorn, which decodes it.
        if found is None or b"%" in path or not path.isascii() or self.root_path:
            return None
        return _Exchange(found[1].decode(), found[2].decode(), self.headers,
                         keep_alive=(parser.get_http_version() != "1.0"
                                     and parser.should_keep_alive()),
                         expect_continue=self.expect_100_continue)

    def _take_turn(self, exchange: _Exchange) -> None:
        exchange.turn = True
        # Even once a 413 is decided, the rest of the body must come in time.
        self._read_body_in_time(not exchange.complete)
        if exchange.complete or exchange.too_large:
            self._start(exchange)
        elif exchange.expect_continue and not self.transport.is_closing():
            self.transport.write(CONTINUE)

    def _start(self, exchange: _Exchange) -> None:
        exchange.started = True
        task = self.loop.create_task(self._answer(exchange))
        # Graceful shutdown waits for these, as for uvicorn's own tasks.
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _answer(self, exchange: _Exchange) -> None:
        try:
            answer = await self.callbacks.answer(exchange.name, exchange.event,
                                                 exchange.headers, exchange.read_body)
        except Exception:
            # Callbacks.answer turns every error into an answer; should that
            # fail too, the client still gets one and the connection goes on.
            log.exception("callback_failed", board=exchange.name, _event=exchange.event)
            answer = INTERNAL
        status, fields, data = encode_answer(*answer)
        exchange.response_complete = True
        if not exchange.disconnected and not self.transport.is_closing():
            # One write for the whole response: one system call, and on
            # loopback one wake-up of the reader, instead of two.
            parts = [STATUS_LINE[status]]
            for name, value in (*self.server_state.default_headers, *fields):
                parts += (name, b": ", value, b"\r\n")
            if not exchange.keep_alive:
                parts.append(b"connection: close\r\n")
            parts += (b"\r\n", data)
            self.transport.write(b"".join(parts))
            if not exchange.keep_alive:
                self.transport.close()
        # Starts the next pipelined request, or arms the keep-alive timeout.
        self.on_response_complete()
