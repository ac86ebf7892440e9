"""Machine lists in pages: keyset paging by name in the engine and the API (a
``Link`` to the next page), and a CLI that prints a fleet page by page, locally
and through a server, with the same result as one read of everything."""

from __future__ import annotations

import functools
import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.cli import clients
from corral.tokens import TokenStore
from tests.serving import serving

CORRAL = str(Path(sys.executable).with_name("corral"))
NAMES = [f"b{i:04d}" for i in range(1, 26)]


def fleet(engine) -> None:
    engine.import_machines("board", {name: {} for name in NAMES})
    for name in NAMES[::3]:
        engine.force_state("board", name, "failed_pinging", actor="t", reason="t")


def test_the_engine_pages_by_name_after_a_cursor(engine):
    fleet(engine)
    pages, after = [], None
    while True:
        page = engine.list_machines("board", limit=10, after=after)
        pages.append([r.name for r in page])
        if len(page) < 10:
            break
        after = page[-1].name
    assert [len(p) for p in pages] == [10, 10, 5]
    assert functools.reduce(operator.iadd, pages, []) == NAMES
    failed = engine.list_machines("board", failed=True, limit=4, after="b0004")
    assert [r.name for r in failed] == ["b0007", "b0010", "b0013", "b0016"]


def test_the_api_links_each_full_page_to_the_next(engine):
    fleet(engine)
    tokens = TokenStore(engine.store, cache_seconds=0)
    viewer = tokens.issue("viewer", "viewer")
    app = create_app(engine, tokens, CollectorRegistry())
    with serving(app) as (address, _):
        base = f"http://{address[0]}:{address[1]}"
        with httpx.Client(headers={"Authorization": f"Bearer {viewer}"}, timeout=30) as http:
            url, seen, links = f"{base}/api/v1/boards?limit=10&failed=false", [], 0
            while url:
                reply = http.get(url)
                assert reply.status_code == 200, reply.text
                seen += [d["name"] for d in reply.json()]
                url = reply.links.get("next", {}).get("url")
                links += url is not None
            assert (seen, links) == (NAMES, 2)
            everything = http.get(f"{base}/api/v1/boards")
            assert [d["name"] for d in everything.json()] == NAMES
            assert "link" not in everything.headers
            assert http.get(f"{base}/api/v1/boards?limit=0").status_code == 422
            assert http.get(f"{base}/api/v1/boards?after=../x").status_code == 422


def test_the_cli_prints_a_fleet_page_by_page_locally_and_remotely(engine, migrated_url,
                                                                  monkeypatch):
    fleet(engine)
    monkeypatch.setattr(clients, "PAGE", 7)
    local = clients.LocalBoards(engine.reads, lambda: engine, "board", "t")
    pages = list(local.find(None, False))
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    assert [d["name"] for p in pages for d in p] == NAMES
    tokens = TokenStore(engine.store, cache_seconds=0)
    viewer = tokens.issue("viewer", "viewer")
    app = create_app(engine, tokens, CollectorRegistry())
    with serving(app) as (address, _):
        remote = clients.RemoteBoards(f"http://{address[0]}:{address[1]}", viewer)
        try:
            remote_pages = list(remote.find(None, True))
        finally:
            remote.http.close()
        assert [d["name"] for p in remote_pages for d in p] == NAMES[::3]
        assert [len(p) for p in remote_pages] == [7, 2]
    env = os.environ | {"CORRAL_DATABASE_URL": migrated_url}
    listed = subprocess.run([CORRAL, "board", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [d["name"] for d in json.loads(listed.stdout)] == NAMES
    table = subprocess.run([CORRAL, "board", "list", "--failed"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "STATE"]
    assert [line.split()[0] for line in lines[1:-1]] == NAMES[::3]
    assert lines[-1] == f"{len(NAMES[::3])} boards"
