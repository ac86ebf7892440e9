"""Console capture inside real ``corral serve`` processes: two workers on one
database (each server backend), one TCP console: exactly one of them reads
it, and when that one is killed the other takes the board over and the text
goes on in the same attempt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from corral.engine.core import Engine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from tests.acceptance.test_http import free_port
from tests.console_server import ConsoleServer
from tests.processes import stop

CORRAL = str(Path(sys.executable).with_name("corral"))


def _worker(url: str, tmp: Path, n: int) -> subprocess.Popen:
    port = free_port()
    env = os.environ | {"CORRAL_DATABASE_URL": url, "CORRAL_LOG_FORMAT": "json",
                        "CORRAL_WORKER_ID": f"worker-{n}", "CORRAL_CONSOLE_INTERVAL": "0.3",
                        "CORRAL_CONSOLE_LEASE": "3"}
    with (tmp / f"serve-{n}.log").open("w") as log:
        process = subprocess.Popen([CORRAL, "serve", "--listen", f"127.0.0.1:{port}"],
                                   env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError((tmp / f"serve-{n}.log").read_text())


def _until(check, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_one_serve_process_captures_a_console_and_another_takes_over(
        server_migrated_url, tmp_path):
    serial = ConsoleServer()
    store = open_store(server_migrated_url)
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    engine.create("board", "b1", attrs={
        "console": {"type": "tcp", "address": f"127.0.0.1:{serial.port}"}})
    engine.force_state("board", "b1", "maintenance", actor="t", reason="no timeouts")
    workers = [_worker(server_migrated_url, tmp_path, n) for n in (1, 2)]

    def text() -> str:
        with store.unit() as tx:
            attempt = tx.consoles.attempt("b1")
            return tx.consoles.read(attempt["id"], offset=0, limit=10000)[1] if attempt else ""

    try:
        assert _until(lambda: serial.connections == 1)
        time.sleep(2)  # several passes of both workers
        assert serial.connections == 1
        with store.unit() as tx:
            owner, _ = tx.consoles.claims()["b1"]
        serial.say("first line\n")
        assert _until(lambda: "first line" in text())
        holder = workers[int(owner == "worker-2")]
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert _until(lambda: serial.connections == 2)
        with store.unit() as tx:
            assert tx.consoles.claims()["b1"][0] != owner
        serial.say("second line\n")
        assert _until(lambda: "second line" in text())
        assert text() == "first line\nsecond line\n"
    finally:
        for worker in workers:
            stop(worker)
        serial.close()
        store.dispose()
