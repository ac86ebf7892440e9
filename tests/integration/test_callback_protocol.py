"""The callback route answered in the HTTP protocol (corral.api.protocol),
over real sockets: what uvicorn does for every other route must still hold for
it: pipelining in order, 100-continue, the payload limit, connection close,
clients that leave early."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import structlog
import uvicorn
from prometheus_client import CollectorRegistry

from corral.api import protocol
from corral.api.app import create_app
from corral.api.protocol import CallbackProtocol
from corral.api.server import uvicorn_config
from corral.tokens import TokenStore
from tests.serving import raw_connections, read_response, request, serving

EVENT = "/api/v1/boards/{}/events/{}"


@pytest.fixture
def lab(engine):
    engine.import_machines("board", {"b1": {}, "b2": {}})
    for name in ("b1", "b2"):
        # Where a board's own token has events to report (by: board).
        engine.force_state("board", name, "pxe_booting", actor="test", reason="set up")
    engine.group.start(threads=2)
    tokens = TokenStore(engine.store, cache_seconds=0)
    app = create_app(engine, tokens, CollectorRegistry())
    with serving(app) as (address, _):
        yield address, {"b1": tokens.issue_for_board("b1"),
                        "viewer": tokens.issue("viewer", "viewer")}
    engine.close()


@pytest.fixture
def connect():
    """Opens connections, closed when the test ends however it ends."""
    yield from raw_connections(30)


def test_serve_answers_callbacks_in_the_protocol(engine):
    app = create_app(engine, TokenStore(engine.store), CollectorRegistry())
    assert issubclass(uvicorn_config(app).http, CallbackProtocol)


def test_unknown_uvicorn_release_falls_back_to_asgi(engine, monkeypatch):
    monkeypatch.setattr(uvicorn, "__version__", "9.1.0")
    app = create_app(engine, TokenStore(engine.store), CollectorRegistry())
    with structlog.testing.capture_logs() as logs:
        assert protocol.callback_protocol(app.callbacks) is None
        assert uvicorn_config(app).http == "auto"
    assert logs[0]["event"] == "callback_protocol_unsupported"


def test_pipelined_requests_are_answered_in_order(lab, engine, connect):
    address, tokens = lab
    sock, stream = connect(address)
    # Callbacks and framework routes mixed, all in one write.
    sock.sendall(b"".join([
        request("POST", EVENT.format("b1", "second_stage_started"), token=tokens["b1"]),
        request("GET", "/api/v1/boards/b1", token=tokens["viewer"]),
        request("POST", EVENT.format("b1", "install_ok"), token=tokens["b1"]),
        request("POST", EVENT.format("b1", "second_stage_started"), token=tokens["b1"]),
        request("GET", "/api/v1/boards/b1", token=tokens["viewer"]),
    ]))
    answers = [read_response(stream) for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 409, 200]
    documents = [json.loads(body) for _, _, body in answers]
    assert (documents[0]["from_state"], documents[0]["state"]) == ("pxe_booting",
                                                                   "installing")
    assert documents[1]["state"] == "installing"
    assert (documents[2]["from_state"], documents[2]["state"]) == ("installing", "rebooting")
    assert documents[3]["error"] == "event_not_allowed"
    assert documents[4]["state"] == "rebooting"
    for _, fields, body in answers:
        assert fields["content-type"] == "application/json"
        assert int(fields["content-length"]) == len(body)
        assert "date" in fields
        assert "connection" not in fields


def test_expect_100_continue(lab, engine, connect):
    address, tokens = lab
    sock, stream = connect(address)
    body = json.dumps({"uptime": 7}).encode()
    head = request("POST", EVENT.format("b1", "second_stage_started"), token=tokens["b1"], headers={
        "Content-Type": "application/json", "Expect": "100-continue"})
    sock.sendall(head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode()))
    # The client sends the body only once told to.
    assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert stream.readline() == b"\r\n"
    sock.sendall(body)
    status, _, answer = read_response(stream)
    assert (status, json.loads(answer)["state"]) == (200, "installing")
    [entry] = [e for e in engine.history("board", "b1") if e.event == "second_stage_started"]
    assert entry.payload == {"uptime": 7}


def test_refusals_before_the_body_and_the_connection(lab, engine, connect):
    """A refusal whose body came whole with its headers leaves the connection
    open; one for the body's size closes it (its rest is not read). The
    announced bodies never sent: test_callback_refusals."""
    address, tokens = lab
    sock, stream = connect(address)
    json_type = {"Content-Type": "application/json"}
    # The token is checked before the body.
    sock.sendall(request("POST", EVENT.format("b1", "second_stage_started"), token="corral_1_wrong",
                         body=b'{"uptime": 7}', headers=json_type))
    status, fields, answer = read_response(stream)
    assert (status, json.loads(answer)["error"]) == (401, "unauthorized")
    assert "connection" not in fields
    big = json.dumps({"log": "x" * 70_000}).encode()
    sock.sendall(request("POST", EVENT.format("b1", "second_stage_started"), token=tokens["b1"],
                         body=big, headers=json_type))
    status, fields, answer = read_response(stream)
    assert (status, json.loads(answer)["error"]) == (413, "payload_too_large")
    assert fields["connection"] == "close"
    assert stream.read() == b""
    assert engine.get("board", "b1").state == "pxe_booting"
    sock, stream = connect(address)
    sock.sendall(request("POST", EVENT.format("b1", "second_stage_started"), token=tokens["b1"]))
    status, _, answer = read_response(stream)
    assert (status, json.loads(answer)["state"]) == (200, "installing")


@pytest.mark.parametrize(("version", "headers"), [("1.0", {}),
                                                  ("1.1", {"Connection": "close"})])
def test_connection_close(lab, connect, version, headers):
    address, tokens = lab
    sock, stream = connect(address)
    sock.sendall(request("POST", EVENT.format("b1", "second_stage_started"), token=tokens["b1"],
                         headers=headers, version=version))
    status, fields, _ = read_response(stream)
    assert (status, fields["connection"]) == (200, "close")
    assert stream.read() == b""  # the server closed the connection


def test_percent_encoded_path(lab, connect):
    address, tokens = lab
    sock, stream = connect(address)
    sock.sendall(request("POST", EVENT.format("b%31", "second_stage_started"), token=tokens["b1"]))
    status, _, answer = read_response(stream)
    assert (status, json.loads(answer)["name"]) == (200, "b1")


def test_client_gone_before_the_answer_still_commits(lab, engine, connect):
    address, tokens = lab
    sock, _ = connect(address)
    sock.sendall(request("POST", EVENT.format("b1", "second_stage_started"), token=tokens["b1"]))
    sock.close()  # before the answer
    deadline = time.monotonic() + 30
    while engine.get("board", "b1").state != "installing":
        assert time.monotonic() < deadline, "the event was not committed"
        time.sleep(0.05)
    # The server is unharmed.
    sock, stream = connect(address)
    sock.sendall(request("POST", EVENT.format("b1", "install_ok"), token=tokens["b1"]))
    assert read_response(stream)[0] == 200


def test_shutdown_finishes_the_answers_in_flight(engine, connect, monkeypatch):
    engine.import_machines("board", {"b1": {}})
    engine.force_state("board", "b1", "pxe_booting", actor="test", reason="set up")
    tokens = TokenStore(engine.store, cache_seconds=0)
    token = tokens.issue_for_board("b1")
    # A commit that takes until the test says so (a slow database, say).
    entered, release = threading.Event(), threading.Event()
    fire_async = engine.fire_async

    async def slow_fire(request):
        entered.set()
        await asyncio.to_thread(release.wait, 30)
        return await fire_async(request)

    monkeypatch.setattr(engine, "fire_async", slow_fire)
    app = create_app(engine, tokens, CollectorRegistry())
    with serving(app) as (address, server):
        sock, stream = connect(address)
        sock.sendall(request("POST", EVENT.format("b1", "second_stage_started"), token=token))
        assert entered.wait(30)
        server.should_exit = True  # as on SIGTERM
        time.sleep(0.5)  # the server's shutdown has begun (it looks every 0.1 s)
        release.set()
        status, fields, answer = read_response(stream)
        assert (status, fields["connection"]) == (200, "close")
        assert json.loads(answer)["state"] == "installing"
        assert stream.read() == b""
