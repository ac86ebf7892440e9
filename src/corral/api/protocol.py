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

from corral.api.callbacks import MAX_PAYLOAD, Callbacks, encode_answer, too_large

log = structlog.get_logger("corral.api")

PATH = re.compile(rb"/api/v1/boards/([^/]+)/events/([^/]+)")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
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


def callback_protocol(callbacks: Callbacks) -> type[asyncio.Protocol] | None:
    """The protocol class to give uvicorn (``Config(http=...)``) so that it answers
    the callback route with ``callbacks``; None on a uvicorn release this module
    was not written against (its own protocol then serves the route through
    :class:`corral.api.callbacks.Front`, at some cost in speed)."""
    version = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])
    if not SUPPORTED_UVICORN[0] <= version <= SUPPORTED_UVICORN[1]:
        log.warning("callback_protocol_unsupported", uvicorn=uvicorn.__version__,
                    note="callbacks are answered through ASGI")
        return None
    return type("BoundCallbackProtocol", (CallbackProtocol,), {"callbacks": callbacks})


class CallbackProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering the callback route itself (with
    the class attribute ``callbacks``, set by :func:`callback_protocol`)."""

    callbacks: Callbacks

    # ---------------------------------------------------- parser callbacks

    def on_headers_complete(self) -> None:
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
            super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
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
        status, fields, data = encode_answer(*await self.callbacks.answer(
            exchange.name, exchange.event, exchange.headers, exchange.read_body))
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
