"""What ``/openapi.json`` says an input may be is what the server takes.

Each case reads the constraint from the document the server serves, then
sends a value just inside it (taken) and one just outside (a 422 that names
the field and changes nothing). schemathesis (tests/acceptance/test_openapi.py)
searches the whole document; these pin the places where the two once
disagreed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.tokens import TokenStore


@pytest.fixture
def api(engine):
    tokens = TokenStore(engine.store, cache_seconds=0)
    app = create_app(engine, tokens, CollectorRegistry()).app
    admin = tokens.issue("root", "admin")

    def call(method: str, path: str, **options: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://corral") as client:
                return await client.request(method, path, headers={
                    "Authorization": f"Bearer {admin}", **options.pop("headers", {})},
                    **options)
        return asyncio.run(go())

    call.document = app.openapi()  # type: ignore[attr-defined]
    call.engine = engine  # type: ignore[attr-defined]
    return call


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def _parameter(document: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    for parameter in document["paths"][path][method]["parameters"]:
        if parameter["name"] == name:
            return parameter["schema"]
    raise KeyError(name)


def _refused(answer: httpx.Response, where: str) -> None:
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert answer.json()["message"].startswith(where), answer.text


def test_a_maize_release_is_an_os_version_in_the_document_and_the_check(api):
    release = _schema(api.document, "MaizeSnapshot")["properties"]["release"]
    assert release["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$"
    for bad in ("", "r 11", "-r11", "r11\n", "a" * 201):
        _refused(api("POST", "/api/v1/maize-snapshots",
                     json={"snapshot": {"release": bad}}), "body.snapshot.release: ")
    assert api.engine.list_machines("job") == []
    taken = api("POST", "/api/v1/maize-snapshots", json={"snapshot": {"release": "a" * 200}})
    assert taken.status_code == 200, taken.text


def test_last_event_id_is_documented_as_a_history_id(api):
    schema = _parameter(api.document, "/api/v1/events", "get", "Last-Event-ID")
    assert {"type": "string", "pattern": "^([0-9]{1,18})?$"} in schema["anyOf"]
    for bad in ("12x", " 1", "1" * 19, "-1"):
        _refused(api("GET", "/api/v1/events", headers={"Last-Event-ID": bad}),
                 "header.Last-Event-ID: ")


def test_a_webhook_url_and_its_filters_are_what_the_document_says(api, backend):
    webhook = _schema(api.document, "WebhookIn")
    assert webhook["properties"]["url"]["maxLength"] == 2000
    assert webhook["properties"]["url"]["pattern"].startswith("^https?://")
    filters = _schema(api.document, "WebhookFilters")
    assert filters["additionalProperties"] is False
    assert sorted(filters["properties"]) == ["event", "kind", "name", "source", "state"]
    secret = "s" * 16
    for bad in ("", "http://", "ftp://h/", "http://h/a b", "http://h/\r\nX-Evil: 1"):
        _refused(api("POST", "/api/v1/webhooks", json={"url": bad, "secret": secret}),
                 "body.url: ")
    _refused(api("POST", "/api/v1/webhooks", json={
        "url": "http://h/", "secret": secret, "filters": {"colour": ["red"]}}),
        "body.filters.colour: ")
    assert api("GET", "/api/v1/webhooks").json() == []
    if backend == "mariadb":
        return  # webhooks are not served there yet (501)
    added = api("POST", "/api/v1/webhooks", json={
        "url": "http://[::1]:9/x?y", "secret": secret, "filters": {"kind": ["board"]}})
    assert added.status_code == 200, added.text
    assert added.json()["filters"] == {"kind": ["board"]}
