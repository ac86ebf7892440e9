"""The event stream as a client sees it: while writers commit 5,000 events
through the API processes, a reader that disconnects at random points and
resumes with Last-Event-ID (on any of the processes) receives every history
row exactly once, in id order."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from corral.engine.core import Engine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from corral.store.schema import history
from tests.acceptance.test_http import CORRAL, free_port
from tests.processes import stop

EVENTS = 5000
BOARDS = 40


def _serve(url: str, tmp: Path, port: int, n: int) -> subprocess.Popen:
    env = os.environ | {"CORRAL_DATABASE_URL": url, "CORRAL_LOG_FORMAT": "json",
                        "CORRAL_TOKEN_CACHE_SECONDS": "30", "CORRAL_EVENTS_HEARTBEAT": "1"}
    with (tmp / f"serve-{n}.log").open("w") as log:
        process = subprocess.Popen([CORRAL, "serve", "--role", "api", "--listen",
                                    f"127.0.0.1:{port}"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError((tmp / f"serve-{n}.log").read_text())


def _read(ports: list[int], token: str, received: list[int], done: threading.Event,
          errors: list[str]) -> None:
    """Read the stream in pieces of random length, each on a random process,
    resuming after the last id received."""
    rng = random.Random(7)
    while not done.is_set():
        port = rng.choice(ports)
        headers = {"Authorization": f"Bearer {token}",
                   "Last-Event-ID": str(received[-1] if received else 0)}
        budget = rng.randint(1, 400)
        try:
            with httpx.stream("GET", f"http://127.0.0.1:{port}/api/v1/events",
                              headers=headers, timeout=30) as answer:
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code} {answer.read()[:200]!r}")
                    return
                for line in answer.iter_lines():
                    if line.startswith("id: "):
                        received.append(int(line[4:]))
                        budget -= 1
                    elif line.startswith("data: "):
                        document = json.loads(line[6:])
                        if document["id"] != received[-1]:
                            errors.append(f"data of {document['id']} under id {received[-1]}")
                    if budget <= 0 or done.is_set():
                        break  # hang up mid-stream
        except httpx.TransportError as exc:
            errors.append(f"transport: {exc}")
            return


def _stream_under_load(url: str, tmp: Path, *, processes: int, events: int = EVENTS,
                       meanwhile: Callable[[Callable[[], bool]], None] | None = None
                       ) -> list[int]:
    """Six writers commit ``events`` force-states through ``processes`` API
    processes (and ``meanwhile`` runs beside them, given a function that
    tells whether they still write) while a reader hangs up
    and resumes at random; once all have finished, the reader must have
    received every history row once, in id order. Returns the ids."""
    store = open_store(url)
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    engine.import_machines("board", {f"e{i:03d}": {} for i in range(BOARDS)})
    from corral.tokens import TokenStore

    tokens = TokenStore(store, cache_seconds=0)
    operator = tokens.issue("ops", "operator")
    ports = [free_port() for _ in range(processes)]
    servers = [_serve(url, tmp, port, n) for n, port in enumerate(ports)]
    try:
        received: list[int] = []
        done = threading.Event()
        errors: list[str] = []
        reader = threading.Thread(target=_read, args=(ports, operator, received, done, errors))
        reader.start()

        def write(writer: int) -> None:
            port = ports[writer % len(ports)]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                              headers={"Authorization": f"Bearer {operator}"}) as client:
                for n in range(writer, events, 6):
                    board = f"e{n % BOARDS:03d}"
                    state = "maintenance" if (n // BOARDS) % 2 == 0 else "ready"
                    answer = client.post(f"/api/v1/boards/{board}/force-state",
                                         json={"state": state, "reason": f"event {n}"})
                    assert answer.status_code == 200, answer.text

        writers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
        for thread in writers:
            thread.start()
        if meanwhile is not None:
            meanwhile(lambda: any(thread.is_alive() for thread in writers))
        for thread in writers:
            thread.join()
        with store.sa.begin() as conn:
            every = [r[0] for r in conn.execute(select(history.c.id).order_by(history.c.id))]
        deadline = time.monotonic() + 120
        while (not received or received[-1] < every[-1]) and time.monotonic() < deadline:
            assert not errors, errors[:5]
            time.sleep(0.2)
        done.set()
        reader.join(timeout=60)
        assert not errors, errors[:5]
        assert received == every  # each row once, in order, across every reconnect
        return every
    finally:
        for server in servers:
            stop(server)
        store.dispose()


def test_a_resuming_reader_gets_every_row_once_in_order(migrated_url, tmp_path):
    # SQLite serves from one process; PostgreSQL and MariaDB from three.
    processes = 1 if migrated_url.startswith("sqlite") else 3
    every = _stream_under_load(migrated_url, tmp_path, processes=processes)
    assert len(every) == BOARDS + EVENTS


def _stopped_writer(url: str, board: str, reason: str, seconds: float) -> dict[str, Any]:
    """Run a writer that stops between writing its history row and its
    commit, let it go after ``seconds``; what it says of its event."""
    process = subprocess.Popen([sys.executable, "-m", "tests.acceptance.stopped_writer",
                                url, board, reason], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        written = json.loads(process.stdout.readline())["written"]
        deadline = time.monotonic() + 10
        while not _is_stopped(process.pid):
            assert time.monotonic() < deadline, "the writer did not stop"
            time.sleep(0.01)
        time.sleep(seconds)
        process.send_signal(signal.SIGCONT)
        outcome = json.loads(process.stdout.readline())
        assert process.wait(timeout=60) == 0
        return {"written": written, **outcome}
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _is_stopped(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return any(line.startswith("State:") and "T" in line.split()[1]
               for line in status.splitlines())


@pytest.mark.mariadb
def test_a_writer_stopped_before_its_commit_is_seen_late_or_refused_never_skipped(tmp_path):
    """The lost row MariaDB's ordering could cause: a writer stopped
    (SIGSTOP) with its history row written and only its commit left. Stopped
    briefly, it commits late and the reader gets its row with the id it was
    written under; stopped longer than the server lets a write transaction
    idle, it is disconnected, its commit fails and the event is refused to
    its caller. Either way, six writers and a resuming reader go on, and the
    reader gets every committed row once, in id order."""
    from corral.store.db import MARIADB_IDLE_WRITE_SECONDS
    from tests.conftest import _migrate, scratch_mariadb_database

    outcomes: dict[str, dict[str, Any]] = {}

    def stop_two_writers(url: str, writing: Callable[[], bool]) -> None:
        time.sleep(1)
        outcomes["brief"] = _stopped_writer(url, "e001", "stopped briefly", 2)
        outcomes["long"] = _stopped_writer(url, "e002", "stopped too long",
                                           MARIADB_IDLE_WRITE_SECONDS + 5)
        assert writing(), "the writers finished before the stops did: more events"

    with scratch_mariadb_database() as scratch:
        url = _migrate(scratch)
        every = _stream_under_load(url, tmp_path, processes=3,
                                   meanwhile=lambda writing: stop_two_writers(url, writing))
        store = open_store(url)
        try:
            with store.sa.begin() as conn:
                reasons = {id_: reason for id_, reason in conn.execute(
                    select(history.c.id, history.c.reason))}
        finally:
            store.dispose()
    brief, long = outcomes["brief"], outcomes["long"]
    assert brief["committed"] == brief["written"]         # late, with its id
    assert reasons[brief["committed"]] == "stopped briefly"
    assert brief["committed"] in every                     # and received once (above)
    assert long["refused"].startswith("Unavailable"), long  # refused to its caller
    assert "stopped too long" not in reasons.values()       # and never committed
    assert len(every) == BOARDS + EVENTS + 1


def _lines_until(process: subprocess.Popen, count: int, seconds: float = 60) -> list[dict]:
    """The first ``count`` JSON lines ``corral watch --json`` prints."""
    found: list[dict] = []
    deadline = time.monotonic() + seconds
    while len(found) < count:
        assert time.monotonic() < deadline, f"watch printed only {found}"
        line = process.stdout.readline()
        if line:
            found.append(json.loads(line))
    return found


def test_watch_follows_the_database_and_a_server_across_its_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/corral.db"
    env = os.environ | {"CORRAL_DATABASE_URL": url, "CORRAL_LOG_FORMAT": "json",
                        "CORRAL_EVENTS_INTERVAL": "0.1"}
    env.pop("CORRAL_URL", None)

    def corral(*args: str) -> str:
        done = subprocess.run([CORRAL, *args], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    corral("db", "upgrade")
    (tmp_path / "lab.yaml").write_text("boards:\n  - {name: w1}\n  - {name: w2}\n")
    corral("board", "import", str(tmp_path / "lab.yaml"))
    local = subprocess.Popen([CORRAL, "watch", "--json", "--name", "w1", "--after", "0"],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        corral("board", "force-state", "w1", "maintenance", "--reason", "bench")
        corral("board", "force-state", "w2", "maintenance", "--reason", "other board")
        seen = _lines_until(local, 2)
        assert [(d["name"], d["event"], d["to_state"]) for d in seen] == [
            ("w1", "create", "new"), ("w1", "force_state", "maintenance")]
    finally:
        local.terminate()
        local.wait(timeout=10)
        local.stdout.close()

    viewer = corral("token", "create", "watcher", "--role", "viewer")
    port = free_port()
    server = _serve(url, tmp_path, port, 0)
    remote = subprocess.Popen([CORRAL, "--url", f"http://127.0.0.1:{port}", "watch", "--json",
                               "--after", "0"], env=env | {"CORRAL_TOKEN": viewer},
                              stdout=subprocess.PIPE, text=True)
    try:
        before = _lines_until(remote, 4)   # two creations, two forces
        stop(server)
        corral("board", "force-state", "w1", "ready", "--reason", "while the server was down")
        server = _serve(url, tmp_path, port, 1)
        after = _lines_until(remote, 1)
        ids = [d["id"] for d in before + after]
        assert ids == sorted(set(ids)) == [1, 2, 3, 4, 5]
        assert after[0]["reason"] == "while the server was down"
    finally:
        remote.terminate()
        remote.wait(timeout=10)
        remote.stdout.close()
        stop(server)


def test_the_stream_refuses_bad_input_and_unknown_tokens(tmp_path):
    url = f"sqlite:///{tmp_path}/corral.db"
    from corral.tokens import TokenStore
    from tests.conftest import _migrate

    _migrate(url)
    store = open_store(url)
    viewer = TokenStore(store, cache_seconds=0).issue("v", "viewer")
    store.dispose()
    port = free_port()
    server = _serve(url, tmp_path, port, 0)
    try:
        base = f"http://127.0.0.1:{port}/api/v1/events"
        auth = {"Authorization": f"Bearer {viewer}"}
        assert httpx.get(base, timeout=10).status_code == 401
        for bad in ("12x", "\u00b2", "9" * 40):
            assert httpx.get(base, headers={**auth, "Last-Event-ID": bad.encode("latin-1")},
                             timeout=10).status_code == 422, bad
        assert httpx.get(base + "?after=-1", headers=auth, timeout=10).status_code == 422
        assert httpx.get(base + "?colour=red", headers=auth, timeout=10).status_code == 422
        with httpx.stream("GET", base + "?after=0", headers=auth, timeout=10) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/event-stream")
            assert next(answer.iter_lines()) == "retry: 2000"
    finally:
        stop(server)


@pytest.mark.postgres
def test_an_idle_transaction_elsewhere_does_not_hold_the_stream_up(pg_migrated_url):
    """A session holding a transaction id that never touches history (an
    operator's psql, say) must not stop the horizon."""
    import psycopg

    from corral.stream import settled_horizon

    store = open_store(pg_migrated_url)
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    idle = psycopg.connect(pg_migrated_url.replace("postgresql+psycopg", "postgresql"))
    try:
        idle.execute("SELECT pg_current_xact_id()")   # holds an xid, idle in transaction
        engine.create("board", "after-idle")
        result: list[int] = []
        worker = threading.Thread(target=lambda: result.append(settled_horizon(store)),
                                  daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert result, "the horizon waited for a transaction that holds no history"
        assert result[0] >= engine.history("board", "after-idle")[0].id
    finally:
        idle.close()
        store.dispose()
