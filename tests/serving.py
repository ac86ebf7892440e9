"""A real HTTP server in the test process, configured as `corral serve` runs it,
and a raw HTTP/1.1 client for what a general-purpose one will not send
(pipelined requests, ``Expect: 100-continue`` by hand, HTTP/1.0)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import uvicorn

from corral.api.callbacks import Front
from corral.api.server import uvicorn_config


@contextmanager
def serving(app: Front, *, http: str | None = None, **config: float
            ) -> Iterator[tuple[tuple[str, int], uvicorn.Server]]:
    """Serve ``app`` on a free loopback port until the block ends; yields the
    address and the server. ``config``: :func:`uvicorn_config`'s keywords;
    ``http``: one of uvicorn's own protocols ("httptools", "h11") instead of
    corral's (the callback route is then answered by :class:`Front`, as under
    any other ASGI server). Stopping is uvicorn's graceful shutdown, as on
    SIGTERM (``server.should_exit``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = uvicorn_config(app, **config)
    if http is not None:
        settings.http = http
    server = uvicorn.Server(settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.01)
    try:
        yield sock.getsockname(), server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def request(method: str, path: str, *, token: str | None = None, body: bytes = b"",
            headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    """One HTTP request as bytes."""
    lines = [f"{method} {path} HTTP/{version}", "Host: corral"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """Status, header fields (names in lower case) and body of one response."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    fields: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        fields[name.strip().lower()] = value.strip()
    body = stream.read(int(fields.get("content-length", "0")))
    return int(status_line.split()[1]), fields, body


def raw_connections(timeout: float):  # type: ignore[no-untyped-def]
    """A fixture body: yields ``connect(address) -> (socket, reader)`` and
    closes every connection it opened when the test ends, however it ends."""
    import socket as _socket

    opened: list = []

    def connect(address: tuple[str, int]):  # type: ignore[no-untyped-def]
        sock = _socket.create_connection(address, timeout=timeout)
        stream = sock.makefile("rb")
        opened.extend((stream, sock))
        return sock, stream

    yield connect
    for each in opened:
        each.close()
