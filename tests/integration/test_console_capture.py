"""Console capture against a real TCP console server on loopback, on every
backend: output lands in the attempt of the boot it follows, secrets never
reach the store, one process captures each board, and a dead process's
boards are taken over once its claim expires."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from corral import console
from corral.console.capture import CaptureSettings, ConsoleCapture
from tests.console_server import ConsoleServer
from tests.integration.helpers import firing

PASSWORD = "Bmc-s3cret-7f2a"
TOKEN = "corral_4242_Zk3pQ-rT8sVw1xY2zA4bC5dE6fG7hJ8kL9mN0pQ1rS2"


@pytest.fixture
def server() -> Iterator[ConsoleServer]:
    serving = ConsoleServer()
    yield serving
    serving.close()


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def board_with_console(engine, server, name="b1"):
    engine.create("board", name, attrs={
        "console": {"type": "tcp", "address": f"127.0.0.1:{server.port}"},
        "power": {"driver": "ipmi", "address": "10.0.0.9", "password": PASSWORD}})
    engine.force_state("board", name, "ready", actor="t", reason="t")


def capture(engine, owner: str, **settings) -> ConsoleCapture:
    return ConsoleCapture(engine.store, engine.clock, owner=owner,
                          settings=CaptureSettings(lease=30.0, **settings),
                          reopen_seconds=0.1)


def text_of(engine, board, attempt=None) -> str:
    try:
        return console.read(engine.store, board, attempt).text
    except Exception:
        return ""


def test_output_lands_in_the_attempt_of_its_boot_and_secrets_are_hidden(engine, server):
    board_with_console(engine, server)
    service = capture(engine, "p1")
    try:
        assert service.run_pass() == ["b1"]
        assert eventually(lambda: server.connections == 1)
        server.say("U-Boot 2024.01\nlogin: ")
        assert eventually(lambda: "login: " in text_of(engine, "b1"))
        engine.fire("board", "b1", "reboot", **firing("reboot"))
        server.say(f"Kernel command line: console=ttyS0 corral.token={TOKEN}\n"
                   f"ipmi password is {PASSWORD}\nLinux version 6.1\n")
        assert eventually(lambda: "Linux version" in text_of(engine, "b1", 2))
        attempts = console.attempts(engine.store, "b1")
        assert [a.attempt for a in attempts] == [1, 2]
        assert attempts[1].history_id is not None
        assert text_of(engine, "b1", 1) == "U-Boot 2024.01\nlogin: "
        second = text_of(engine, "b1", 2)
        assert TOKEN not in second
        assert PASSWORD not in second
        assert "corral.token=(hidden)" in second
        assert f"ipmi password is {PASSWORD}" not in second
    finally:
        service.shutdown()
    with engine.store.unit() as tx:
        assert tx.consoles.claims() == {"b1": (None, None)}


def test_a_boot_with_no_output_still_gets_its_attempt(engine, server):
    board_with_console(engine, server)
    service = capture(engine, "p1")
    try:
        service.run_pass()
        engine.fire("board", "b1", "reboot", **firing("reboot"))
        service.run_pass()
        (only,) = console.attempts(engine.store, "b1")
        assert only.chars == 0
        assert console.read(engine.store, "b1").text == ""
    finally:
        service.shutdown()


def test_one_process_captures_a_board_and_another_takes_over_when_it_dies(
        engine, server, clock):
    board_with_console(engine, server)
    first, second = capture(engine, "p1"), capture(engine, "p2")
    try:
        assert first.run_pass() == ["b1"]
        assert second.run_pass() == []
        assert eventually(lambda: server.connections == 1)
        time.sleep(0.3)
        assert server.connections == 1
        # p1 dies: its reader stops, its claim is never renewed nor released.
        for reader in first.readers.values():
            reader.stop()
        first.readers.clear()
        clock.advance(29)
        assert second.run_pass() == []
        clock.advance(2)
        assert second.run_pass() == ["b1"]
        assert eventually(lambda: server.connections == 2)
        server.say("after the takeover\n")
        assert eventually(lambda: "after the takeover" in text_of(engine, "b1"))
    finally:
        first.shutdown()
        second.shutdown()


def test_a_console_that_hangs_up_is_read_again(engine, server):
    board_with_console(engine, server)
    service = capture(engine, "p1")
    try:
        service.run_pass()
        assert eventually(lambda: server.connections == 1)
        server.drop_clients()
        assert eventually(lambda: server.connections == 2)
        server.say("back again\n")
        assert eventually(lambda: "back again" in text_of(engine, "b1"))
    finally:
        service.shutdown()


def test_a_board_keeps_at_most_its_bound(engine, server):
    board_with_console(engine, server)
    service = capture(engine, "p1", max_bytes=300)
    try:
        service.run_pass()
        assert eventually(lambda: server.connections == 1)
        for n in range(20):
            server.say(f"line {n:02d} " + "x" * 40 + "\n")
            time.sleep(0.01)
        assert eventually(lambda: "line 19" in text_of(engine, "b1"))
        (attempt,) = console.attempts(engine.store, "b1")
        assert attempt.bytes <= 300
        assert attempt.dropped > 0
        assert "line 00" not in text_of(engine, "b1")
    finally:
        service.shutdown()


def test_wait_for_sees_a_pattern_that_arrives_while_it_waits(engine, server, clock):
    board_with_console(engine, server)
    service = capture(engine, "p1")
    try:
        service.run_pass()
        assert eventually(lambda: server.connections == 1)
        server.say("old boot login: \n")
        assert eventually(lambda: "old boot" in text_of(engine, "b1"))
        # Without since: the newest attempt, which has it.
        assert console.wait_for(engine.store, "b1", r"login:", timeout=0).attempt == 1
        clock.advance(1)
        since = engine.clock()
        # Only attempts begun since then count: none has it yet.
        assert console.wait_for(engine.store, "b1", r"login:", timeout=0.3, since=since) is None
        engine.fire("board", "b1", "reboot", **firing("reboot"))
        threading.Timer(0.5, server.say, ["Linux\nsim login: "]).start()
        found = console.wait_for(engine.store, "b1", r"(\S+) login:", timeout=10, since=since)
        assert found is not None
        assert found.attempt == 2
        assert found.line == "sim login: "
        assert found.text == "sim login:"
        assert text_of(engine, "b1", 2)[found.offset:].startswith("sim login:")
    finally:
        service.shutdown()
