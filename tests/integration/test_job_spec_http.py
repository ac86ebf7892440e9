"""``POST /api/v1/jobs`` with hostile specs: each is a 422 naming what is wrong,
never a 500, and nothing is stored."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.tokens import TokenStore

MINIMAL = (Path(__file__).resolve().parents[1] / "golden" / "jobspec" / "v1" /
           "maize-minimal.yaml").read_text()
ALIASES = "context:\n  x0: &x0 [a, a, a, a, a, a, a, a, a]\n" + "".join(
    f"  x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]\n" for i in range(1, 8))


async def _submit(app, token: str, spec: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
        return await client.post("/api/v1/jobs", json={"spec": spec},
                                 headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize(("spec", "message"), [
    (MINIMAL.replace("apiVersion: corral/v1", "apiVersion: [corral/v1]"),
     "apiVersion: must be a string, not a list"),
    (MINIMAL.replace("apiVersion: corral/v1", "apiVersion: {corral: v1}"),
     "apiVersion: must be a string, not a mapping"),
    ('{"a": ' * 3000 + "1" + "}" * 3000, "(document): nested too deeply"),
    ("a: " + "[" * 3000 + "]" * 3000, "line 1: not valid YAML: nested more than"),
    (MINIMAL + 'context: {note: "a\\0b"}\n', "context.note: the string holds a NUL"),
    (MINIMAL + ALIASES, "not valid YAML: aliases expand to more than"),
], ids=["list-version", "mapping-version", "deep-json", "deep-yaml", "nul", "aliases"])
def test_a_hostile_spec_is_a_422_naming_the_problem(engine, spec, message):
    tokens = TokenStore(engine.store, cache_seconds=0)
    operator = tokens.issue("ops", "operator")
    app = create_app(engine, tokens, CollectorRegistry()).app
    reply = asyncio.run(_submit(app, operator, spec))
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == "invalid_request"
    assert message in reply.json()["message"]
    assert engine.list_machines("job") == []
