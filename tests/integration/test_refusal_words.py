"""A 422 says what is wrong in Corral's words, whatever the client sent.

Every route with a body, and the callback route, get bodies of every wrong
type, at the top and in each of their fields; no answer may name a Python
type, a module or pydantic's own words ("Input should be a valid
dictionary", "<class 'int'>", "dict_type"). A few answers are pinned in full.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.tokens import TokenStore

# The engine's backends have their own tests: this is about words.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

INTERNALS = ("class '", "<class", "typing", "pydantic", "builtins", "dict_type",
             "model_type", "_type", "Input should", "String should", "Field required",
             "Extra inputs", "Value error", "dictionary", "instance of", "function-",
             "NoneType", "[str", "[int")
PYTHON_TYPES = re.compile(r"\bnot (?:bool|int|str|float|list|dict|tuple|NoneType)\b")
WRONG = ([], "text", 5, 2.5, True, None, [{}], {"k": [1]}, -1, 10**30, "")


@pytest.fixture
def api(engine):
    engine.import_machines("board", {"b1": {"arch": "amd64"}}, actor="t", reason="t")
    tokens = TokenStore(engine.store, cache_seconds=0)
    app = create_app(engine, tokens, CollectorRegistry()).app
    admin, board = tokens.issue("root", "admin"), tokens.issue_for_board("b1")

    def call(method: str, path: str, body: Any, *, token: str = admin) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://corral") as client:
                return await client.request(method, path, content=json.dumps(body), headers={
                    "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        return asyncio.run(go())

    call.document = app.openapi()  # type: ignore[attr-defined]
    call.board_token = board  # type: ignore[attr-defined]
    return call


def _bodies(document: dict[str, Any], operation: dict[str, Any]) -> list[Any]:
    """Wrong bodies: each wrong value as the body, then as every field."""
    schema = (operation.get("requestBody", {}).get("content", {})
              .get("application/json", {}).get("schema", {}))
    fields: dict[str, Any] = {}
    if "$ref" in schema:
        fields = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]].get(
            "properties", {})
    return [*WRONG, *({name: value for name in fields} for value in WRONG),
            {"not_a_field": 1, **dict.fromkeys(fields, "x" * 300)}]


def test_no_refusal_of_a_wrong_body_names_python_or_pydantic(api):
    refused = 0
    for path, operations in api.document["paths"].items():
        for method, operation in operations.items():
            if method not in ("post", "put", "patch"):
                continue
            url = re.sub(r"\{[^}]+\}", "x", path.replace("{name}", "b1"))
            for body in _bodies(api.document, operation):
                for token in (None, api.board_token) if "/events/" in path else (None,):
                    answer = (api(method, url, body, token=token) if token
                              else api(method, url, body))
                    if answer.status_code != 422:
                        continue
                    refused += 1
                    text = answer.text
                    said = [word for word in INTERNALS if word in text]
                    said += PYTHON_TYPES.findall(text)
                    assert not said, (method, path, body, text)
    assert refused > 500  # the bodies did reach the checks


def test_a_few_refusals_in_full(api):
    def message(path: str, body: Any) -> str:
        answer = api("POST", path, body)
        assert answer.status_code == 422, answer.text
        return answer.json()["message"]

    assert message("/api/v1/boards/b1/check", []) == "body: must be a mapping with keys " \
        "loop, reason, not a list"
    assert message("/api/v1/boards/b1/check", {"loop": "two", "colour": 1}) == (
        "body.loop: must be a whole number, not 'two', body.colour: unknown key "
        "(allowed: loop, reason)")
    assert message("/api/v1/boards/b1/maintenance", {"on": "maybe", "reason": 7}) == (
        "body.on: must be true or false, not 'maybe', body.reason: must be a string, "
        "not the number 7")
    assert message("/api/v1/boards/b1/retire", {}) == "body.reason: is required"
    assert message("/api/v1/pool-fleets", {"fabric": "f1", "count": 0}) == (
        "body.count: must be a whole number of at least 1, not the number 0")
    assert message("/api/v1/boards/b1/fire", {"event": "reboot", "payload": [1]}) == (
        "body.payload: the payload must be a JSON object, not a list")
    assert message("/api/v1/boards/b1/events/install_ok", 5) == (
        "body: the payload must be a JSON object, not the number 5")
    leased = message("/api/v1/leases", {"board": "b1", "on_return": "burn"})
    assert "body.on_return: must be one of reimage, power_cycle, not 'burn'" in leased
    # A secret is never repeated, whatever is wrong with it.
    hook = message("/api/v1/webhooks", {"url": "http://h.lab/x", "secret": "s3cret"})
    assert hook == "body.secret: must be at least 16 characters long"
