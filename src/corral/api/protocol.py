"""The board callback route answered in the HTTP protocol itself.

Every board calls ``POST /api/v1/boards/{name}/events/{event}`` many times an
hour, and one API process is bound by the interpreter, not by the database:
of what it spends on a callback answered through ASGI, a quarter went to the
ASGI plumbing around it (the request cycle object, its event, the scope, the
two ``send`` messages) and to writing the response in two system calls.

:class:`CallbackProtocol` is uvicorn's httptools protocol with that one route
taken out of ASGI: once the request line and headers name the route, the
request becomes an :class:`_Exchange` instead of an ASGI request cycle and
:meth:`Callbacks.answer` starts on it at once: a request it refuses from the
headers (the token, the ``Content-Length``) is answered without waiting for
its body, and the connection closed; one it accepts waits for its body
(collected up to :data:`MAX_PAYLOAD`). The response goes out in one write. Everything else (the
operator API, metrics, a callback whose path is percent-encoded) takes
uvicorn's own path to the FastAPI app unchanged.

An exchange stands in the connection's place of uvicorn's request cycle
(``self.cycle``), so keep-alive, HTTP/1.1 pipelining (responses in request
order, whatever route each request took), graceful shutdown (which waits for
answers in flight) and ``Expect: 100-continue`` keep working as uvicorn does
them, except that ``100 Continue`` is sent only once the token and length
have passed. It relies on the protocol's hooks, so :func:`callback_protocol` uses it
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
    invalid,
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
LINGER = 2.0
"""Seconds a connection refused in the middle of a body stays half-open (the
answer and a FIN sent, what still comes read and dropped): closing it at once
with bytes unread makes the kernel reset it, and a client still sending may
then lose the answer. Two seconds is far longer than an answer takes to reach
a board on the lab network and the board to stop (Apache waits as long)."""
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
                 "turn", "waiter")

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
        self.started = False  # its answer is being worked out
        self.response_complete = False
        self.disconnected = False
        # Resolved when the body is complete, passes the limit or cannot come.
        self.waiter: asyncio.Future[None] | None = None

    @property
    def too_large(self) -> bool:
        return self.size > MAX_PAYLOAD

    def wake(self) -> None:
        """The body is in, or too large, or the client is gone."""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


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
    # Answered and half-closed (_linger): what comes is dropped unparsed.
    _lingering = False

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
                # Answered already: the rest of its body is not awaited.
                self.transport.close()
                return
            if type(current) is not _Exchange and getattr(current, "response_started", False):
                # An answer is on its way: it ends the connection.
                current.keep_alive = False
                return
            # The application reading the body sees a disconnect; nothing it
            # sends afterwards is written. (A callback is answered only once
            # its body is in, which it is not.)
            current.response_complete = True
            current.disconnected = True
            if type(current) is _Exchange:
                current.wake()
        self.transport.write(TIMED_OUT)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        super().data_received(data)

    def _linger(self) -> None:
        """End a connection whose request was answered before all its body
        came: the answer is followed by a FIN at once; the socket is closed
        when the client closes its end (eof_received) or :data:`LINGER`
        seconds later."""
        self._lingering = True
        self._cancel_read_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)
        else:
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
        if exchange.response_complete or exchange.too_large:
            return  # refused already: the rest is dropped
        exchange.size += len(body)
        if exchange.too_large:
            exchange.body.clear()
            exchange.wake()
        else:
            exchange.body += body

    def on_message_complete(self) -> None:
        self._cancel_read_timer()
        exchange = self.cycle
        if type(exchange) is not _Exchange:
            super().on_message_complete()
            return
        exchange.complete = True
        exchange.wake()

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
            exchange.wake()
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
        self._read_body_in_time(not exchange.complete)
        # The answer is worked out from the headers at once, while the body
        # comes (on one packet with the headers, it is in before the task runs).
        exchange.started = True
        task = self.loop.create_task(self._answer(exchange))
        # Graceful shutdown waits for these, as for uvicorn's own tasks.
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _read_body(self, exchange: _Exchange) -> bytes:
        """The exchange's body, once the token and length have passed
        (:meth:`Callbacks.answer`): only now is a client that waits for
        ``100 Continue`` told to send it."""
        if not exchange.complete and not exchange.too_large and not exchange.disconnected:
            if exchange.expect_continue and not self.transport.is_closing():
                exchange.expect_continue = False
                self.transport.write(CONTINUE)
            exchange.waiter = self.loop.create_future()
            await exchange.waiter
        if exchange.too_large:
            raise too_large()
        if not exchange.complete:
            raise invalid("body", "the client went away before sending all of it")
        return bytes(exchange.body)

    async def _answer(self, exchange: _Exchange) -> None:
        try:
            answer = await self.callbacks.answer(exchange.name, exchange.event,
                                                 exchange.headers,
                                                 lambda: self._read_body(exchange))
        except Exception:
            # Callbacks.answer turns every error into an answer; should that
            # fail too, the client still gets one and the connection goes on.
            log.exception("callback_failed", board=exchange.name, _event=exchange.event)
            answer = INTERNAL
        status, fields, data = encode_answer(*answer)
        exchange.response_complete = True
        if not exchange.complete or status == 413:
            # Refused before all its body came (a 401 from the headers alone)
            # or for its size: the connection would otherwise have to read the
            # rest of it, however long, to reach the next request.
            exchange.keep_alive = False
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
            if not exchange.complete:
                self._linger()
            elif not exchange.keep_alive:
                self.transport.close()
        # Starts the next pipelined request, or arms the keep-alive timeout.
        self.on_response_complete()
