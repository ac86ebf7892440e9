"""The callback route refuses before it reads, over a real server and raw sockets.

A request without a valid token is answered 401 from its headers alone: no
``100 Continue``, no body read, the connection closed. A body over the limit
is refused from its ``Content-Length`` at once, and while it streams when it
has none. Each request here announces a 1 GB body and sends none of it (or
only what the limit allows): an answer that arrives before the socket's
timeout did not wait for the body, which would take the server's body timeout
(30 s) to give up on. Served both by corral's HTTP protocol (``corral serve``)
and by :class:`corral.api.callbacks.Front` under uvicorn's own protocols.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.api.callbacks import MAX_PAYLOAD
from corral.engine.core import Engine
from corral.tokens import TokenStore
from tests.serving import raw_connections, read_response, serving

EVENT = "/api/v1/boards/b1/events/second_stage_started"
GIGABYTE = 1_000_000_000
# Far below the server's body timeout (30 s): an answer within it was given
# without waiting for a body that never comes.
SOCKET_TIMEOUT = 10.0


@dataclass(frozen=True, kw_only=True)
class Lab:
    server: str
    address: tuple[str, int]
    tokens: TokenStore
    board: str


# corral serve's protocol, and Front under uvicorn's own (any other ASGI server).
SERVERS = ["corral", "httptools", "h11"]


@pytest.fixture(params=SERVERS)
def lab(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Lab]:
    engine.import_machines("board", {"b1": {}})
    # Where the board's own token has events to report (by: board).
    engine.force_state("board", "b1", "pxe_booting", actor="test", reason="set up")
    engine.group.start(threads=2)
    # Cached far longer than any test runs: a refusal of a revoked token here
    # is the cache's doing, not its expiry's.
    tokens = TokenStore(engine.store, cache_seconds=600)
    app = create_app(engine, tokens, CollectorRegistry())
    http = None if request.param == "corral" else request.param
    with serving(app, http=http) as (address, _):
        yield Lab(server=request.param, address=address, tokens=tokens,
                  board=tokens.issue_for_board("b1"))
    engine.close()


@pytest.fixture
def connect() -> Iterator[object]:
    """Opens connections with :data:`SOCKET_TIMEOUT`, closed when the test ends."""
    yield from raw_connections(SOCKET_TIMEOUT)


def head(*, token: str | None, length: int | None = GIGABYTE, expect: bool = True,
         chunked: bool = False) -> bytes:
    """A callback's request line and headers, announcing a body."""
    lines = [f"POST {EVENT} HTTP/1.1", "Host: corral", "Content-Type: application/json"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def refused_at_once(stream: BinaryIO) -> tuple[int, str]:
    """The answer to a request whose body was never sent: its status and error.
    It must be the final answer (no ``100 Continue`` first), and the server
    must close the connection after it; a socket timeout fails the test."""
    status, fields, body = read_response(stream)
    assert status != 100, "the server asked for the body"
    assert fields.get("connection") == "close"
    assert stream.read() == b"", "the server did not close the connection"
    return status, json.loads(body)["error"]


def post_ok(connect, lab: Lab) -> None:
    """A callback that succeeds (and leaves the board's token in the cache)."""
    sock, stream = connect(lab.address)
    sock.sendall(head(token=lab.board, length=0, expect=False))
    status, _, body = read_response(stream)
    assert status == 200, body


@pytest.mark.parametrize("token", [None, "corral_999999_wrong", "corral_1_wrong", "not-a-token"])
def test_without_a_valid_token_the_answer_is_401_from_the_headers(lab, connect, token):
    sock, stream = connect(lab.address)
    sock.sendall(head(token=token))
    assert refused_at_once(stream) == (401, "unauthorized")


@pytest.mark.parametrize("where", ["here", "elsewhere"])
def test_a_revoked_token_is_401_from_the_headers(lab, engine, connect, where):
    post_ok(connect, lab)
    assert lab.tokens.cached(lab.board) is not None
    if where == "here":
        # As when the server itself revokes (a board's reimage token).
        lab.tokens.revoke("board:b1")
    else:
        # As `corral token revoke` does, from another process and its own
        # cache: the server learns of it at its next revalidation, which its
        # background thread runs every token_cache_seconds / 2.
        TokenStore(engine.store).revoke("board:b1")
        lab.tokens.revalidate()
    sock, stream = connect(lab.address)
    sock.sendall(head(token=lab.board))
    assert refused_at_once(stream) == (401, "unauthorized")
    assert engine.get("board", "b1").state == "installing"  # only the first one fired


def test_a_content_length_over_the_limit_is_413_at_once(lab, engine, connect):
    sock, stream = connect(lab.address)
    sock.sendall(head(token=lab.board))
    assert refused_at_once(stream) == (413, "payload_too_large")
    sock, stream = connect(lab.address)
    sock.sendall(head(token=lab.board, length=MAX_PAYLOAD + 1, expect=False))
    assert refused_at_once(stream) == (413, "payload_too_large")
    assert engine.get("board", "b1").state == "pxe_booting"


@pytest.mark.parametrize("expect", [False, True])
def test_a_chunked_body_is_413_as_soon_as_it_passes_the_limit(lab, engine, connect, expect):
    sock, stream = connect(lab.address)
    sock.sendall(head(token=lab.board, length=None, chunked=True, expect=expect))
    if expect:
        # The token passed and no length says the body is too large: go on.
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert stream.readline() == b"\r\n"
    # One byte more than the limit, and then neither more nor the last chunk.
    size = MAX_PAYLOAD + 1
    sock.sendall(f"{size:x}\r\n".encode() + b" " * size + b"\r\n")
    assert refused_at_once(stream) == (413, "payload_too_large")
    assert engine.get("board", "b1").state == "pxe_booting"


def test_a_valid_token_within_the_limit_gets_100_continue(lab, engine, connect):
    body = json.dumps({"uptime": 7}).encode()
    sock, stream = connect(lab.address)
    sock.sendall(head(token=lab.board, length=len(body)))
    assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert stream.readline() == b"\r\n"
    sock.sendall(body)
    status, fields, answer = read_response(stream)
    assert (status, json.loads(answer)["state"]) == (200, "installing")
    assert "connection" not in fields  # the connection goes on
    [entry] = [e for e in engine.history("board", "b1") if e.event == "second_stage_started"]
    assert entry.payload == {"uptime": 7}


def test_a_refused_request_whose_body_came_whole_keeps_the_connection(lab, connect):
    """Corral's protocol reads a body that arrived with its headers anyway: a
    refusal then leaves the connection open for the next request."""
    sock, stream = connect(lab.address)
    body = b'{"a": 1}'
    sock.sendall(head(token="corral_999999_wrong", length=len(body), expect=False) + body)
    status, fields, _ = read_response(stream)
    assert status == 401
    if lab.server != "corral":
        # Front, under another server, cannot tell whether the body arrived.
        assert fields["connection"] == "close"
        assert stream.read() == b""
        return
    assert "connection" not in fields
    sock.sendall(head(token=lab.board, length=0, expect=False))
    assert read_response(stream)[0] == 200


def test_a_client_that_sends_its_body_anyway_is_not_reset(lab, connect):
    """A client that sends its whole body without waiting for ``100 Continue``
    (most do) is still sending when the 401 comes. Corral's protocol then
    reads and drops the rest for a moment (LINGER) instead of closing with
    bytes unread, which makes the kernel answer them with a reset: the
    client's send fails, and on a real network its answer may be lost."""
    if lab.server != "corral":
        pytest.skip("uvicorn's own protocols close at once (docs/http-api.md#board-callbacks)")
    size = 4 * 1024 * 1024
    sock, stream = connect(lab.address)
    failures: list[OSError] = []

    def send() -> None:
        try:
            # No token: refused before the server has read a quarter of it.
            sock.sendall(head(token=None, length=size, expect=False)
                         + b" " * size)
        except OSError as exc:
            failures.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        status, fields, _ = read_response(stream)
    finally:
        sender.join(SOCKET_TIMEOUT)
    assert (status, fields["connection"]) == (401, "close")
    assert failures == []
    assert stream.read() == b""
