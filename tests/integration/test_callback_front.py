"""The callback route has three parsers: the HTTP protocol of
:mod:`corral.api.protocol`, which serves it in `corral serve`;
:class:`corral.api.callbacks.Front`, which serves it under any other ASGI
server; and the FastAPI route that documents it. All must answer every
request alike."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.api.callbacks import EVENT, NAME
from corral.tokens import TokenStore
from tests.serving import serving

PATH = "/api/v1/boards/{}/events/{}"


def _requests(board: str, operator: str, viewer: str) -> list[tuple[str, dict]]:
    json_type = {"Content-Type": "application/json"}
    # The boards are network-booting: their own token reports second-stage progress.
    report = "second_stage_started"
    return [
        (PATH.format("b1", report), {}),
        (PATH.format("b1", report), {"headers": {"Authorization": "Basic abc"}}),
        (PATH.format("b1", report), {"token": "corral_1_wrong"}),
        (PATH.format("b1", report), {"token": "corral_\u00b2_wrong"}),
        (PATH.format("b1", report), {"token": f"corral_{2**63}_wrong"}),
        (PATH.format("b2", report), {"token": board}),
        (PATH.format("b1", "reboot"), {"token": viewer}),
        (PATH.format("ghost", "reboot"), {"token": operator}),
        (PATH.format("-bad", "reboot"), {"token": operator}),
        (PATH.format("b1", "Bad-Event"), {"token": board}),
        (PATH.format("b1", "install_ok"), {"token": board}),
        (PATH.format("b1", report), {"token": board, "content": "{bad",
                                     "headers": json_type}),
        (PATH.format("b1", report), {"token": board, "json": [1, 2]}),
        (PATH.format("b1", report), {"token": board, "content": "x=1",
                                     "headers": {"Content-Type": "text/plain"}}),
        (PATH.format("b1", report), {"token": board, "headers": {"Idempotency-Key": ""}}),
        (PATH.format("b1", report), {"token": board, "content": '{"a": 1e400}',
                                     "headers": json_type}),
        (PATH.format("b1", report), {"token": board, "content": b'{"a": "\xed\xa0\x80"}',
                                     "headers": json_type}),
        (PATH.format("b1", report), {"token": board, "json": {"load": 0.5}}),
        (PATH.format("b1", "install_ok"), {"token": board,
                                           "headers": {"Idempotency-Key": "k1"}}),
        (PATH.format("b1", "install_ok"), {"token": board,
                                           "headers": {"Idempotency-Key": "k1"}}),
        (PATH.format("b1", "install_failed"), {"token": board,
                                               "headers": {"Idempotency-Key": "k1"}}),
        (PATH.format("b1", report), {"token": board}),
        (PATH.format("b1", "retire"), {"token": board}),
        (PATH.format("b1", "power_cycle_ok"), {"token": operator}),
        (PATH.format("b2", "maintenance"), {"token": operator, "content": "null",
                                            "headers": json_type}),
    ]


async def _answers(client: httpx.AsyncClient, requests) -> list[tuple[int, str | None, dict]]:
    answers = []
    for path, options in requests:
        options = dict(options)
        headers = dict(options.pop("headers", {}))
        if token := options.pop("token", None):
            headers["Authorization"] = f"Bearer {token}".encode()
        reply = await client.post(path, headers=headers, **options)
        body = reply.json()
        answers.append((reply.status_code, body.get("error"),
                        {k: v for k, v in body.items() if k not in ("message", "details")}))
    return answers


async def _answers_over_asgi(app, requests) -> list[tuple[int, str | None, dict]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
        return await _answers(client, requests)


async def _answers_over_http(base: str, requests) -> list[tuple[int, str | None, dict]]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return await _answers(client, requests)


def test_protocol_front_and_framework_route_answer_alike(engine, tmp_path):
    engine.import_machines("board", {"b1": {}, "b2": {}})
    results = []
    for attempt in ("protocol", "front", "framework"):
        for name in ("b1", "b2"):
            engine.force_state("board", name, "pxe_booting", actor="test", reason=attempt)
        tokens = TokenStore(engine.store, cache_seconds=0)
        board = tokens.issue_for_board("b1")
        operator = tokens.issue(f"ops-{attempt}", "operator")
        viewer = tokens.issue(f"viewer-{attempt}", "viewer")
        front = create_app(engine, tokens, CollectorRegistry())
        app = front if attempt == "front" else front.app
        requests = _requests(board, operator, viewer)
        # Idempotency keys are per token name; each attempt has its own board
        # token name, so rename the key instead.
        requests = [(p, o | {"headers": {"Idempotency-Key": f"{attempt}-k1"}})
                    if o.get("headers", {}).get("Idempotency-Key") == "k1" else (p, o)
                    for p, o in requests]
        if attempt == "protocol":
            with serving(front) as ((host, port), _):
                results.append(asyncio.run(_answers_over_http(f"http://{host}:{port}",
                                                              requests)))
        else:
            results.append(asyncio.run(_answers_over_asgi(app, requests)))
    _, front_answers, framework_answers = results
    # Epochs differ between the rounds (the board went on); the rest must not.
    strip = [[(s, e, {k: v for k, v in d.items() if k != "epoch"}) for s, e, d in r]
             for r in results]
    assert strip[0] == strip[1] == strip[2]
    statuses = [s for s, _, _ in front_answers]
    # The text/plain payload is a 415 (send JSON), from both.
    assert statuses == [401, 401, 401, 401, 401, 403, 403, 404, 422, 422, 409, 422, 422, 415,
                        422, 422, 422, 200, 200, 200, 409, 409, 403, 403, 200]
    assert [d.get("replayed") for _, _, d in front_answers[18:20]] == [False, True]
    # A refusal lists what this token may fire in the board's state.
    assert front_answers[10][2]["allowed_events"] == ["maintenance_requested",
                                                      "second_stage_started"]
    assert framework_answers[10][2]["allowed_events"] == front_answers[10][2]["allowed_events"]


# Names and keys near the patterns' edges: valid ones, and text of any kind
# but the path's own separators: a segment that is empty, '.' or '..', or
# holds '/' (even escaped), names another path, which Front refuses without
# a token before any route (and the framework alone answers 404).
# No lone surrogates: they cannot be sent as UTF-8 at all.
_SEGMENT = st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)),
                   min_size=1, max_size=210).filter(lambda s: s not in (".", ".."))
_NAMES = st.from_regex(NAME, fullmatch=True) | _SEGMENT
_EVENTS = st.from_regex(EVENT, fullmatch=True) | _SEGMENT
_KEYS = st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0xff),
                            max_size=210)


def test_the_fast_path_refuses_a_path_and_headers_as_the_framework_route_does(engine):
    """The fast path's own check of the path and the Idempotency-Key
    (corral.api.callbacks.request_problems) against pydantic's, which the
    framework route applies: same status, message and details, on the same
    generated requests (without a token: 401 once the request is well formed)."""
    front = create_app(engine, TokenStore(engine.store, cache_seconds=0), CollectorRegistry())

    async def answer(app, path: str, key: str | None) -> tuple[int, dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
            reply = await client.post(path, headers={} if key is None else {
                "Idempotency-Key": key.encode("latin-1")})
            return reply.status_code, reply.json()

    @settings(max_examples=300, deadline=None)
    @given(name=_NAMES, event=_EVENTS, key=_KEYS)
    def same(name: str, event: str, key: str | None) -> None:
        path = PATH.format(quote(name, safe=""), quote(event, safe=""))
        fast = asyncio.run(answer(front, path, key))
        framework = asyncio.run(answer(front.app, path, key))
        assert fast == framework, (name, event, key)
        assert fast[0] in (401, 404, 422)

    same()
