"""Hostile and careless input to the HTTP service, on every backend: a clear
4xx that changes nothing, an answer to every request, bounded bodies and
read times, idempotency keys bound to their request, each event fired
only by those its transition names (``by:``), and the headers that keep a
browser from misusing an answer."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from corral.api.app import create_app
from corral.api.callbacks import MAX_BODY, RefusalLog
from corral.api.routes.console import CONSOLE
from corral.tokens import TokenStore
from tests.integration.helpers import snapshot
from tests.serving import read_response, request, serving

EVENT = "/api/v1/boards/{}/events/{}"


@pytest.fixture
def lab(engine):
    """Two boards (b1 ready, b2 network-booting) served over real HTTP, with a
    token of each kind; ``lab.http`` is a client, ``lab.address`` the server."""
    engine.import_machines("board", {"b1": {}, "b2": {}})
    engine.force_state("board", "b1", "ready", actor="test", reason="set up")
    engine.force_state("board", "b2", "pxe_booting", actor="test", reason="set up")
    tokens = TokenStore(engine.store, cache_seconds=0)
    app = create_app(engine, tokens, CollectorRegistry())

    class Lab:
        pass

    lab = Lab()
    lab.engine = engine
    lab.app = app
    lab.tokens = {"b1": tokens.issue_for_board("b1"), "b2": tokens.issue_for_board("b2"),
                  "viewer": tokens.issue("viewer", "viewer"),
                  "operator": tokens.issue("ops", "operator"),
                  "admin": tokens.issue("root", "admin")}
    with serving(app, header_timeout=1.0, body_timeout=1.0) as (address, _):
        lab.address = address
        with httpx.Client(base_url=f"http://{address[0]}:{address[1]}", timeout=30) as http:
            lab.http = http
            yield lab


def call(lab, method, path, token=None, **options):
    headers = dict(options.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {lab.tokens.get(token, token)}"
    return lab.http.request(method, path, headers=headers, **options)


def raw(lab, data: bytes, *, timeout: float = 15) -> tuple[socket.socket, object]:
    sock = socket.create_connection(lab.address, timeout=timeout)
    sock.sendall(data)
    return sock, sock.makefile("rb")


# ------------------------------------------------------------- always an answer


def test_an_unexpected_error_in_a_callback_is_a_logged_500(lab, monkeypatch):
    async def broken(_request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(lab.engine, "fire_async", broken)
    with structlog.testing.capture_logs() as logs:
        reply = call(lab, "POST", EVENT.format("b2", "second_stage_started"), "b2")
    assert (reply.status_code, reply.json()["error"]) == (500, "internal")
    assert "a bug" not in reply.text
    [failed] = [e for e in logs if e["event"] == "callback_failed"]
    assert (failed["board"], failed["_event"], failed["log_level"]) == (
        "b2", "second_stage_started", "error")
    assert failed.get("exc_info")
    # The connection and the server go on.
    assert call(lab, "GET", "/api/v1/boards/b2", "viewer").status_code == 200


def test_the_protocol_answers_even_when_the_endpoint_itself_fails(lab, monkeypatch):
    async def broken(*_args):
        raise RuntimeError("worse")

    monkeypatch.setattr(lab.app.callbacks, "answer", broken)
    sock, stream = raw(lab, request("POST", EVENT.format("b2", "second_stage_started"),
                                    token=lab.tokens["b2"]))
    with sock:
        status, _, body = read_response(stream)
        assert (status, json.loads(body)["error"]) == (500, "internal")


@pytest.mark.parametrize("token", ["corral_\u00b2_secret", f"corral_{2**63}_secret",
                                   "corral_99999999999999999999_secret", "corral__x"])
def test_malformed_token_ids_are_401_everywhere(lab, token):
    header = f"Bearer {token}".encode()
    for method, path in (("POST", EVENT.format("b1", "reboot")), ("GET", "/api/v1/boards"),
                         ("POST", "/api/v1/boards/b1/fire")):
        reply = lab.http.request(method, path, headers={"Authorization": header}, json={})
        assert (reply.status_code, reply.json()["error"]) == (401, "unauthorized"), path


# ------------------------------------------------------------- one payload check


BAD_PAYLOADS = [
    ('{"event": "reboot", "payload": {"a": NaN}}', "payload.a"),
    ('{"event": "reboot", "payload": {"a": -Infinity}}', "payload.a"),
    ('{"event": "reboot", "payload": {"a": 1e400}}', "payload.a"),
    ('{"event": "reboot", "payload": {"a": "x\\u0000"}}', "payload.a"),
    ('{"event": "reboot", "payload": {"a": ["\\ud800"]}}', "payload.a[0]"),
    ('{"event": "reboot", "payload": {"\\udfff": 1}}', "payload"),
    ('{"event": "reboot", "payload": {"a": 18446744073709551616}}', "payload.a"),
    ('{"event": "reboot", "reason": "a\\u0000b"}', "reason"),
    ('{"event": "reboot", "reason": "\\ud83d"}', "reason"),
    ('{"event": "reboot", "payload": ' + '{"a": ' * 40 + "1" + "}" * 41, "nested"),
    ('{"event": "reboot", "payload": ' + '{"a": [' * 1500 + "1" + "]}" * 1500 + "}", "nested"),
]


@pytest.mark.parametrize(("body", "names"), BAD_PAYLOADS,
                         ids=[f"bad-{i}" for i in range(len(BAD_PAYLOADS))])
def test_fire_refuses_what_a_backend_would_not_store(lab, body, names):
    before = snapshot(lab.engine)
    reply = call(lab, "POST", "/api/v1/boards/b1/fire", "operator", content=body.encode(),
                 headers={"Content-Type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert names in reply.json()["message"]
    assert snapshot(lab.engine) == before


@pytest.mark.parametrize("reason", ["stuck\u0000", "\ud800"])
def test_force_state_refuses_a_bad_reason(lab, reason):
    before = snapshot(lab.engine)
    body = json.dumps({"state": "maintenance", "reason": reason}).encode()
    reply = call(lab, "POST", "/api/v1/boards/b1/force-state", "operator", content=body,
                 headers={"Content-Type": "application/json"})
    assert (reply.status_code, "reason" in reply.json()["message"]) == (422, True)
    assert snapshot(lab.engine) == before


def test_callback_payloads_pass_the_same_check(lab):
    before = snapshot(lab.engine)
    for body in (b'{"a": 1e400}', b'{"a": "\xed\xa0\x80"}', b'{"a": "\\u0000"}',
                 b'{"a": ' * 33 + b"1" + b"}" * 33):
        reply = call(lab, "POST", EVENT.format("b2", "second_stage_started"), "b2",
                     content=body, headers={"Content-Type": "application/json"})
        assert (reply.status_code, reply.json()["error"]) == (422, "invalid_request"), body
    assert snapshot(lab.engine) == before


@pytest.mark.parametrize("before", [2**63, 2**64, -1, 0])
def test_history_cursor_out_of_range_is_422(lab, before):
    reply = call(lab, "GET", f"/api/v1/boards/b1/history?before={before}", "viewer")
    assert (reply.status_code, reply.json()["error"]) == (422, "invalid_request")


def test_stored_payloads_never_poison_a_read(lab, backend):
    """Rows written before the payload check (or by hand) still read back."""
    row = lab.engine.get("board", "b1")
    # As JSON text: the encoder in this thread would give up on the depth too.
    payloads = ['{"deep": ' + "[" * 970 + "1" + "]" * 970 + "}"]
    if backend != "postgres":  # jsonb itself refuses unpaired surrogates
        payloads.append('{"log": "bad \\ud800 byte", "\\udc80": 1}')
    value = "CAST(:payload AS jsonb)" if backend == "postgres" else ":payload"
    with lab.engine.store.sa.begin() as conn:
        for payload in payloads:
            conn.execute(text(
                "INSERT INTO history (machine_id, epoch, from_state, to_state, event, source, "
                f"at, payload) VALUES (:id, 1, 'ready', 'ready', 'poll_ok', 'operation', :at, "
                f"{value})"), {"id": row.id, "at": row.state_entered_at, "payload": payload})
    reply = call(lab, "GET", "/api/v1/boards/b1/history", "viewer")
    assert reply.status_code == 200, reply.text
    entries = reply.json()["entries"]
    assert "<unreadable: nested too deeply>" in json.dumps(entries[len(payloads) - 1])
    if backend != "postgres":
        assert entries[0]["payload"] == {"log": "bad \ufffd byte", "\ufffd": 1}


# ------------------------------------------------------------- bodies and time


def test_a_huge_body_without_a_token_is_refused_unread(lab):
    head = (b"POST /api/v1/jobs HTTP/1.1\r\nHost: corral\r\nContent-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n")
    sock, stream = raw(lab, head + b"{" * 1000)
    with sock:
        status, fields, body = read_response(stream)
    assert (status, json.loads(body)["error"]) == (401, "unauthorized")
    assert fields["connection"] == "close"


def test_a_body_over_the_limit_is_413_before_it_is_read(lab):
    head = (f"POST /api/v1/jobs HTTP/1.1\r\nHost: corral\r\nAuthorization: Bearer "
            f"{lab.tokens['operator']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode()
    sock, stream = raw(lab, head)
    with sock:
        status, fields, body = read_response(stream)
    assert (status, json.loads(body)["error"]) == (413, "payload_too_large")
    assert fields["connection"] == "close"


def test_a_chunked_body_over_the_limit_is_413(lab):
    chunk = b"x" * 65536
    def chunks():
        for _ in range(MAX_BODY // len(chunk) + 2):
            yield chunk
    reply = call(lab, "POST", "/api/v1/jobs", "operator", content=chunks(),
                 headers={"Content-Type": "application/json"})
    assert (reply.status_code, reply.json()["error"]) == (413, "payload_too_large")


def test_slow_clients_are_dropped(lab):
    """Twenty connections that trickle a request are each answered 408 and
    closed once the read timeouts (1 s here) pass."""
    partial = [b"POST /api/v1/jobs HTTP/1.1\r\nHost: corral\r\n",  # headers never end
               b"GET /api/v1/boards HTTP/1.1\r\nHo",
               b"",  # connects, says nothing
               # headers done, body never comes
               (f"POST {EVENT.format('b2', 'second_stage_started')} HTTP/1.1\r\nHost: c\r\n"
                f"Authorization: Bearer {lab.tokens['b2']}\r\nContent-Length: 100\r\n\r\n{{")
               .encode()]
    opened = [raw(lab, partial[i % len(partial)]) for i in range(20)]
    try:
        for index, (_, stream) in enumerate(opened):
            data = stream.read()  # until the server closes (the socket timeout: 15 s)
            assert data.startswith(b"HTTP/1.1 408 "), (index, data[:80])
    finally:
        for sock, _ in opened:
            sock.close()
    assert lab.engine.get("board", "b2").state == "pxe_booting"
    # Clients that keep time are served as before.
    assert call(lab, "GET", "/api/v1/boards/b1", "viewer").status_code == 200


# ------------------------------------------------------------- idempotency keys


def test_an_idempotency_key_is_bound_to_its_board_and_event(lab):
    key = {"Idempotency-Key": "reimage-2026-12-02"}
    first = call(lab, "POST", EVENT.format("b1", "reboot"), "operator", headers=key)
    again = call(lab, "POST", EVENT.format("b1", "reboot"), "operator", headers=key)
    assert (first.status_code, again.status_code, again.json()["replayed"]) == (200, 200, True)
    before = snapshot(lab.engine)
    for board, event in (("b2", "reboot"), ("b1", "maintenance")):
        reply = call(lab, "POST", EVENT.format(board, event), "operator", headers=key)
        assert reply.status_code == 409, reply.text
        message = reply.json()["message"]
        assert "board 'b1' event 'reboot'" in message
        assert f"board {board!r} event {event!r}" in message
    assert snapshot(lab.engine) == before


# ------------------------------------------------------------- refusals are logged


def test_refused_callbacks_are_logged(lab):
    with structlog.testing.capture_logs() as logs:
        call(lab, "POST", EVENT.format("b2", "install_ok"), "b2")
        call(lab, "POST", EVENT.format("b2", "retire"), "b2")
    refused = [e for e in logs if e["event"] == "callback_refused"]
    assert [(e["board"], e["_event"], e["status"]) for e in refused] == [
        ("b2", "install_ok", 409), ("b2", "retire", 403)]
    assert "not allowed" in refused[0]["reason"]
    assert "admin" in refused[1]["reason"]


def test_refusal_log_is_rate_limited_per_board():
    now = [0.0]
    refusals = RefusalLog(burst=5, window=60, timer=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for _ in range(20):
            refusals.note("b1", "install_ok", 409, "not allowed")
        refusals.note("b2", "install_ok", 409, "not allowed")
        now[0] = 61
        refusals.note("b1", "install_ok", 409, "not allowed")
    boards = [e["board"] for e in logs]
    assert boards == ["b1"] * 5 + ["b2", "b1"]
    assert logs[-1]["suppressed"] == 15


# ------------------------------------------------------------- who may fire what


def test_a_person_firing_a_board_s_own_event_is_told_so(lab):
    reply = call(lab, "POST", EVENT.format("b2", "second_stage_started"), "operator")
    assert (reply.status_code, reply.json()["error"]) == (403, "forbidden")
    assert reply.json()["message"] == (
        "second_stage_started is reported by the board itself; "
        "operators can force a state with `corral board force-state`")
    assert lab.engine.get("board", "b2").state == "pxe_booting"


def test_a_board_token_fires_only_its_second_stage_events(lab):
    before = snapshot(lab.engine)
    for event in ("retire", "leave_maintenance", "power_cycle_ok", "reboot", "maintenance"):
        reply = call(lab, "POST", EVENT.format("b2", event), "b2")
        assert (reply.status_code, reply.json()["error"]) == (403, "forbidden"), event
    assert snapshot(lab.engine) == before
    mine = call(lab, "GET", "/api/v1/boards/b2", "b2").json()
    assert mine["allowed_events"] == ["maintenance_requested", "second_stage_started"]
    reply = call(lab, "POST", EVENT.format("b2", "second_stage_started"), "b2")
    assert (reply.status_code, reply.json()["state"]) == (200, "installing")


def test_only_an_admin_retires_a_board(lab):
    before = snapshot(lab.engine)
    reason = {"reason": "end of life"}
    attempts = [("POST", EVENT.format("b1", "retire"), {}),
                ("POST", "/api/v1/boards/b1/fire", {"json": {"event": "retire"}}),
                ("POST", "/api/v1/boards/b1/force-state",
                 {"json": {"state": "retired", **reason}}),
                ("POST", "/api/v1/boards/b1/retire", {"json": reason})]
    for method, path, options in attempts:
        reply = call(lab, method, path, "operator", **options)
        assert (reply.status_code, reply.json()["error"]) == (403, "forbidden"), path
    assert snapshot(lab.engine) == before
    seen = call(lab, "GET", "/api/v1/boards/b1", "operator").json()
    assert "retire" not in seen["allowed_events"]
    assert seen["accepted_events"]["retire"] == ["admin"]
    assert seen["accepted_events"]["poll_ok"] == ["operation"]
    assert "retire" in call(lab, "GET", "/api/v1/boards/b1", "admin").json()["allowed_events"]
    reply = call(lab, "POST", "/api/v1/boards/b1/force-state", "admin",
                 json={"state": "retired", **reason})
    assert (reply.status_code, reply.json()["state"]) == (200, "retired")


def test_operation_results_come_only_from_workers(lab):
    before = snapshot(lab.engine)
    for token in ("operator", "admin"):
        reply = call(lab, "POST", "/api/v1/boards/b1/fire", token, json={"event": "poll_ok"})
        assert (reply.status_code, reply.json()["error"]) == (403, "forbidden")
        assert "operation" in reply.json()["message"]
    assert snapshot(lab.engine) == before


def test_a_pipelined_request_waits_for_its_turn_without_timing_out(lab, monkeypatch):
    """The body timer starts when a request's turn comes: a request pipelined
    behind a slow answer is not dropped while it waits, unread."""
    fire_async = lab.engine.fire_async
    slow = [True]

    async def slow_then_fast(request):
        if slow.pop() if slow else False:
            await asyncio.sleep(2.5)  # longer than the 1 s body timeout
        return await fire_async(request)

    monkeypatch.setattr(lab.engine, "fire_async", slow_then_fast)
    first = request("POST", EVENT.format("b2", "second_stage_started"), token=lab.tokens["b2"])
    body = b'{"step": 2}'
    second = request("POST", EVENT.format("b2", "install_ok"), token=lab.tokens["b2"],
                     body=body, headers={"Content-Type": "application/json"})
    sock, stream = raw(lab, first + second[:-len(body)])
    with sock:
        time.sleep(1.5)  # the second request's headers are in, its body is not
        sock.sendall(body)
        answers = [read_response(stream) for _ in range(2)]
    assert [status for status, _, _ in answers] == [200, 200]
    assert lab.engine.get("board", "b2").state == "rebooting"


def test_a_client_gone_mid_body_fires_nothing(lab):
    """Under any ASGI server (Front): a part of a body is never taken for the
    whole, so a callback whose client left before its body fires nothing."""
    before = snapshot(lab.engine)
    scope = {"type": "http", "method": "POST",
             "path": EVENT.format("b2", "second_stage_started"),
             "headers": [(b"authorization", f"Bearer {lab.tokens['b2']}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", b"40")]}
    messages = [{"type": "http.request", "body": b"{}", "more_body": True},
                {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(lab.app(scope, receive, send))
    assert sent[0]["status"] == 422
    assert snapshot(lab.engine) == before


# ------------------------------------------------------------- browsers


def _policy(header: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (d.split() for d in header.split(";") if d.strip())}


def _secured(reply: httpx.Response) -> bool:
    return (reply.headers.get("x-content-type-options") == "nosniff"
            and reply.headers.get("referrer-policy") == "no-referrer")


def test_the_console_is_served_under_a_strict_content_security_policy(lab):
    for path in ("/", "/console/app.js", "/console/style.css"):
        reply = call(lab, "GET", path)
        assert reply.status_code == 200, path
        policy = _policy(reply.headers["content-security-policy"])
        assert policy["default-src"] == policy["script-src"] == ["'self'"], path
        assert policy["style-src"] == policy["connect-src"] == ["'self'"], path
        assert policy["frame-ancestors"] == policy["object-src"] == ["'none'"], path
        assert policy["base-uri"] == ["'none'"], path
        assert _secured(reply), path
    # Nothing in the console that such a policy refuses: no inline script, no
    # event handler or style attribute in its markup, none written by its script.
    page = (CONSOLE / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script src="/console/app.js">']
    for source in (page, (CONSOLE / "app.js").read_text()):
        assert not re.search(r"\son[a-z]+\s*=\s*[\"'`$]", source)
        assert not re.search(r"\sstyle\s*=", source)
        assert "javascript:" not in source
        assert not re.search(r"\beval\(|new Function\(", source)


def test_every_api_answer_carries_nosniff_and_no_referrer(lab):
    answers = {
        "a route": call(lab, "GET", "/api/v1/boards", "viewer"),
        "a 401 from a route": call(lab, "GET", "/api/v1/boards"),
        "a 404 from the framework": call(lab, "GET", "/api/v1/nowhere", "viewer"),
        "a refusal before the body is read": call(lab, "POST", "/api/v1/jobs", json={}),
        "a refused callback": call(lab, "POST", EVENT.format("b1", "retire"), "b1"),
        "a callback": call(lab, "POST", EVENT.format("b2", "second_stage_started"), "b2"),
        "health": call(lab, "GET", "/healthz"),
        "metrics": call(lab, "GET", "/metrics"),
        "the OpenAPI document": call(lab, "GET", "/openapi.json"),
    }
    assert [reply.status_code for reply in answers.values()] == [
        200, 401, 404, 401, 403, 200, 200, 200, 200]
    assert [what for what, reply in answers.items() if not _secured(reply)] == []
    # The same answers from the ASGI front (any ASGI server), callbacks included.
    async def over_asgi() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=lab.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
            board = {"Authorization": f"Bearer {lab.tokens['b2']}"}
            return [await client.post(EVENT.format("b2", "install_ok"), headers=board),
                    await client.post(EVENT.format("b2", "retire"), headers=board),
                    await client.post("/api/v1/jobs", json={}),
                    await client.get("/api/v1/boards/b2", headers=board)]
    replies = asyncio.run(over_asgi())
    assert [reply.status_code for reply in replies] == [200, 403, 401, 200]
    assert all(_secured(reply) for reply in replies)
    # Each header once, whichever path answered.
    assert all(len(reply.headers.get_list("x-content-type-options")) == 1
               for reply in [*answers.values(), *replies])


def test_the_interactive_api_pages_are_off_and_the_document_is_served(lab):
    """/docs and /redoc would load their scripts from a CDN."""
    assert call(lab, "GET", "/docs").status_code == 404
    assert call(lab, "GET", "/redoc").status_code == 404
    assert call(lab, "GET", "/docs/oauth2-redirect").status_code == 404
    document = call(lab, "GET", "/openapi.json")
    assert document.status_code == 200
    assert document.json()["info"]["title"] == "Corral"
