"""A board's console over HTTP and in the CLI: the attempt list with the
newest attempt's text, a page of an attempt by offset, clear 404s and 422s
(never a 500), and ``corral board console`` locally and through a server."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.tokens import TokenStore
from tests.serving import serving

CORRAL = str(Path(sys.executable).with_name("corral"))
ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def captured(engine) -> None:
    engine.create("board", "b1", attrs={"console": {"type": "tcp",
                                                     "address": "127.0.0.1:7001"}})
    engine.create("board", "quiet")
    with engine.store.unit() as tx:
        tx.consoles.sync_claims(["b1"])
        first = tx.consoles.begin(board="b1", history_id=None, now=NOW)
        tx.consoles.append(first, "U-Boot 2024.01\nlogin: ", NOW)
        second = tx.consoles.begin(board="b1", history_id=12, now=NOW)
        tx.consoles.append(second, "Linux version 6.1\n", NOW)
        tx.consoles.append(second, "b1 login: ", NOW)


@pytest.fixture
def http(engine):
    captured(engine)
    tokens = TokenStore(engine.store, cache_seconds=0)
    viewer = tokens.issue("viewer", "viewer")
    with serving(create_app(engine, tokens, CollectorRegistry())) as (address, _), \
            httpx.Client(base_url=f"http://{address[0]}:{address[1]}", timeout=30,
                         headers={"Authorization": f"Bearer {viewer}"}) as client:
        client.viewer = viewer  # type: ignore[attr-defined]
        yield client


def test_the_console_route_lists_attempts_and_the_newest_text(http):
    reply = http.get("/api/v1/boards/b1/console")
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert [a["attempt"] for a in doc["attempts"]] == [1, 2]
    assert doc["attempts"][1]["history_id"] == 12
    assert doc["capture"] == {"owner": None, "until": None}
    assert doc["latest"]["attempt"] == 2
    assert doc["latest"]["text"] == "Linux version 6.1\nb1 login: "
    quiet = http.get("/api/v1/boards/quiet/console").json()
    assert quiet == {"board": "quiet", "capture": None, "attempts": [], "latest": None}


def test_an_attempt_reads_a_page_at_a_time(http):
    page = http.get("/api/v1/boards/b1/console/2", params={"offset": 6, "limit": 7}).json()
    assert page == {"board": "b1", "attempt": 2, "offset": 6, "next_offset": 13,
                    "chars": 28, "text": "version"}
    rest = http.get("/api/v1/boards/b1/console/2", params={"offset": 13}).json()
    assert rest["text"] == " 6.1\nb1 login: "
    end = http.get("/api/v1/boards/b1/console/2", params={"offset": 28}).json()
    assert (end["text"], end["next_offset"]) == ("", 28)


@pytest.mark.parametrize(("path", "status", "says"), [
    ("/api/v1/boards/nope/console", 404, "nope"),
    ("/api/v1/boards/b1/console/3", 404, "board b1 has no console attempt 3 (it has 1..2)"),
    ("/api/v1/boards/quiet/console/1", 404, "board quiet has no console captured"),
    ("/api/v1/boards/b1/console/0", 422, "attempt"),
    ("/api/v1/boards/b1/console/two", 422, "attempt"),
    ("/api/v1/boards/b1/console/1?offset=-1", 422, "offset"),
    ("/api/v1/boards/b1/console/1?limit=0", 422, "limit"),
    ("/api/v1/boards/b1/console/1?offset=99999999999999999999999", 422, "offset"),
])
def test_bad_requests_get_a_clear_error(http, path, status, says):
    reply = http.get(path)
    assert reply.status_code == status, reply.text
    assert says in reply.text


def test_reading_a_console_needs_a_token(http):
    base = str(http.base_url).rstrip("/")
    assert httpx.get(f"{base}/api/v1/boards/b1/console").status_code == 401


def test_corral_board_console_prints_an_attempt_locally_and_through_a_server(
        http, migrated_url):
    env = os.environ | {"CORRAL_DATABASE_URL": migrated_url}
    run = [CORRAL, "board", "console"]
    newest = subprocess.run([*run, "b1"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout == "Linux version 6.1\nb1 login: \n"
    first = subprocess.run([*run, "b1", "--attempt", "1"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.stdout == "U-Boot 2024.01\nlogin: \n"
    remote = subprocess.run([CORRAL, "--url", str(http.base_url).rstrip("/"), "board",
                             "console", "b1", "--attempt", "1"],
                            cwd=ROOT, env=env | {"CORRAL_TOKEN": http.viewer},
                            capture_output=True, text=True, timeout=120)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == first.stdout
    missing = subprocess.run([*run, "b1", "--attempt", "9"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0
    assert "board b1 has no console attempt 9 (it has 1..2)" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_corral_board_console_follow_prints_new_text_and_new_attempts(engine, migrated_url):
    import signal
    import threading
    import time

    captured(engine)
    process = subprocess.Popen([CORRAL, "board", "console", "b1", "--follow"], cwd=ROOT,
                               env=os.environ | {"CORRAL_DATABASE_URL": migrated_url},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(iter(lambda: process.stdout.read(1), "")),
                     daemon=True).start()

    def printed(text: str) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if text in "".join(out):
                return True
            time.sleep(0.1)
        return False

    try:
        assert printed("Linux version 6.1\nb1 login: ")
        with engine.store.unit() as tx:
            tx.consoles.append(tx.consoles.attempt("b1"), "root\n", NOW)
        assert printed("b1 login: root\n")
        with engine.store.unit() as tx:
            third = tx.consoles.begin(board="b1", history_id=30, now=NOW)
            tx.consoles.append(third, "U-Boot again\n", NOW)
        assert printed("root\nU-Boot again\n")
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "--- attempt 3 ---" in err
    assert "Traceback" not in err
