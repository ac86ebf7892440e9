"""Kill -9 an engine process at a bad moment; after restart nothing is lost
or doubled. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from corral.engine.core import Engine
from corral.store.schema import history, operations
from corral.store.schema import machines as machines_table
from tests.integration.test_concurrency import replay
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]
CORRAL = str(Path(sys.executable).with_name("corral"))
pytestmark = pytest.mark.slow


def wait_for(predicate, *, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def count_timeouts(engine: Engine) -> int:
    with engine.store.sa.begin() as conn:
        return int(conn.execute(select(func.count()).where(history.c.event == "timeout"))
                   .scalar_one())


def test_kill_during_sweep_then_every_timeout_fires_once(engine, migrated_url):
    total = 3000
    engine.import_machines("board", {f"b{i:04d}": {} for i in range(total)})
    # Waiting in `rebooting` (as after a power cycle), so that each timeout
    # writes one operation too (rebooting -> pinging runs a ping).
    with engine.store.sa.begin() as conn:
        conn.execute(update(machines_table).values(state="rebooting"))
    sweeper = [sys.executable, "-m", "tests.integration.sweeper", migrated_url]
    victim = subprocess.Popen([*sweeper, "--batch", "50", "--pause", "0.05"], cwd=ROOT,
                              stdout=subprocess.DEVNULL)
    wait_for(lambda: count_timeouts(engine) >= 200, what="the sweep to start")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    fired_before = count_timeouts(engine)
    assert 200 <= fired_before < total, "the kill must land mid-sweep"

    rerun = subprocess.run(sweeper, cwd=ROOT, capture_output=True, text=True, check=True)
    assert fired_before + int(rerun.stdout) == total
    with engine.store.sa.begin() as conn:
        per_machine = dict(conn.execute(
            select(history.c.machine_id, func.count()).group_by(history.c.machine_id)).all())
        ops = int(conn.execute(select(func.count()).select_from(operations)).scalar_one())
    # create + exactly one timeout per board; one ping operation per timeout.
    assert len(per_machine) == total
    assert set(per_machine.values()) == {2}
    assert ops == total
    assert {r.state for r in engine.list_machines("board")} == {"pinging"}


def _serve(url: str, log: Path, **settings: str) -> subprocess.Popen:
    env = os.environ | {
        "CORRAL_DATABASE_URL": url,
        "CORRAL_SIM_POWER_CYCLE_FAILURE": "0",
        "CORRAL_SIM_PING_FAILURE": "0",
        "CORRAL_SIM_POLL_FAILURE": "0",
        "CORRAL_SIM_REIMAGE_RATE": "0",
        "CORRAL_OPERATION_INTERVAL": "0.1",
        "CORRAL_SWEEP_INTERVAL": "0.2",
        "CORRAL_LOG_FORMAT": "json",
    } | {f"CORRAL_{k.upper()}": v for k, v in settings.items()}
    with log.open("a") as stderr:
        return subprocess.Popen([CORRAL, "serve", "--simulate", "--role", "worker"],
                                cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)


def test_kill_while_operation_leased_then_it_completes_once(store, machines, migrated_url,
                                                           tmp_path):
    log = tmp_path / "serve.log"
    engine = Engine(store, machines)          # the real clock, like the server's
    engine.create("board", "b1")
    engine.force_state("board", "b1", "power_cycling", actor="t", reason="t")

    def leased():
        with engine.store.sa.begin() as conn:
            return conn.execute(select(operations).where(operations.c.status == "running")
                                ).first()

    first = _serve(migrated_url, log, sim_operation_seconds="120", operation_lease="2")
    try:
        op = wait_for(leased, what="the operation to be leased")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert op.kind == "power_cycle"
    assert op.attempts == 1
    assert engine.get("board", "b1").state == "power_cycling"

    second = _serve(migrated_url, log, sim_operation_seconds="0", operation_lease="30")
    try:
        wait_for(lambda: engine.get("board", "b1").state in ("rebooting", "pinging",
                                                             "check_queued", "ready"),
                 timeout=60, what="the re-run operation to move the board on")
    finally:
        returncode = stop(second, log=log)
    assert returncode == 0, log.read_text()

    with engine.store.sa.begin() as conn:
        stored = conn.execute(select(operations).where(operations.c.id == op.id)).one()
        results = conn.execute(select(func.count()).where(history.c.operation_id == op.id)
                               ).scalar_one()
        row_id = conn.execute(select(machines_table.c.id)
                              .where(machines_table.c.name == "b1")).scalar_one()
    assert (stored.status, stored.attempts) == ("done", 2)
    assert results == 1
    entries = list(reversed(engine.history("board", "b1", limit=1000)))
    assert entries[0].machine_id == row_id
    replay(machines["board"], entries)
