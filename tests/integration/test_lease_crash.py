"""Leases under crashes, on PostgreSQL: two engine processes, 200 boards,
1,000 lease requests from 20 owners, engine processes and holders killed
with SIGKILL at random.

Afterwards, from the history: no board was ever held by two leases at once,
no lease was lost, every lease ended in a terminal state, and every board a
lease gave back went through its return path before it was handed out again.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import select

from corral.engine.core import Engine
from corral.leases.model import ENDED
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from corral.store.schema import history
from corral.store.schema import machines as machines_table
from tests.integration.test_crash import CORRAL, ROOT, wait_for
from tests.processes import stop

# `make test` runs it alone, after the rest: it keeps both cores busy.
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.alone,
              pytest.mark.timeout(900)]
BOARDS = 200
OWNERS = [f"o{i:02d}" for i in range(20)]
PER_OWNER = 50
HOLD = ("lease_hold", "lease_reimage")
GIVE_BACK = ("lease_return", "lease_return_cycle", "lease_unhold")


def _lab(tmp_path: Path) -> dict[str, str]:
    """The lab's definitions, with a board that boots in a second (its
    rebooting wait), so that 1,000 leases pass in a few minutes."""
    machines = tmp_path / "statemachines"
    shutil.copytree(DEFAULT_STATEMACHINES_DIR, machines)
    board = machines / "board.yaml"
    text = board.read_text()
    waiting = "    timeout: 45\n    on_timeout: pinging\n"
    assert waiting in text
    board.write_text(text.replace(waiting, "    timeout: 1\n    on_timeout: pinging\n"))
    return {"CORRAL_STATEMACHINES_DIR": str(machines)}


def _engine_process(url: str, log: Path, lab: dict[str, str]) -> subprocess.Popen:
    env = os.environ | lab | {
        "CORRAL_DATABASE_URL": url,
        "CORRAL_SIM_POWER_CYCLE_FAILURE": "0", "CORRAL_SIM_PING_FAILURE": "0",
        "CORRAL_SIM_POLL_FAILURE": "0", "CORRAL_SIM_REIMAGE_RATE": "0",
        "CORRAL_SIM_OPERATION_SECONDS": "0.02",
        "CORRAL_OPERATION_INTERVAL": "0.1", "CORRAL_OPERATION_THREADS": "16",
        "CORRAL_SWEEP_INTERVAL": "0.2",
        "CORRAL_LEASE_INTERVAL": "0.2", "CORRAL_LOG_FORMAT": "json", "CORRAL_LOG_LEVEL": "warning",
        # Returned boards are health-checked before they are leased again.
        "CORRAL_HEALTH_INTERVAL": "0.2", "CORRAL_HEALTH_THREADS": "16",
        # A killed process's operations (checks too) are taken over within 5 s.
        "CORRAL_OPERATION_LEASE": "5",
    }
    with log.open("a") as stderr:
        return subprocess.Popen([CORRAL, "serve", "--simulate", "--role", "worker"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def _holders(url: str, owners: list[str], seed: int, acked: Path, leases: int,
             lab: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(env=os.environ | lab, args=
        [sys.executable, "-m", "tests.integration.lease_holders", url,
         "--owners", ",".join(owners), "--leases", str(leases), "--seed", str(seed),
         "--acked", str(acked)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lease_states(engine: Engine) -> dict[str, str]:
    with engine.store.sa.begin() as conn:
        return dict(conn.execute(select(machines_table.c.name, machines_table.c.state)
                                 .where(machines_table.c.kind == "lease")).all())


def test_leases_survive_killed_engines_and_holders(pg_migrated_url, tmp_path):
    url = pg_migrated_url
    store = open_store(url)
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    engine.import_machines("board", {f"c{i:03d}": {"labels": {"rack": f"r{i % 5}"}}
                                     for i in range(BOARDS)})
    for i in range(BOARDS):
        engine.force_state("board", f"c{i:03d}", "ready", actor="test", reason="crash test")
    log, acked = tmp_path / "engines.log", tmp_path / "acked"
    lab = _lab(tmp_path)
    rng = random.Random(7)
    engines = [_engine_process(url, log, lab) for _ in range(2)]
    # Four holder processes of five owners each; the last is killed midway
    # and a fresh one carries on for its owners with what was left to ask.
    groups = [OWNERS[i:i + 5] for i in range(0, 20, 5)]
    holders = [_holders(url, group, seed, acked, PER_OWNER, lab)
               for seed, group in enumerate(groups)]
    kills = {"engine": 0, "holder": 0}
    reports: dict = {}
    try:
        time.sleep(8)
        os.kill(holders[3].pid, signal.SIGKILL)
        holders[3].communicate(timeout=30)
        kills["holder"] += 1
        done_before = sum(1 for line in acked.read_text().split() if line)
        asked_by_victim = _asked_by(engine, groups[3])
        holders[3] = _holders(url, groups[3], 99, acked,
                              max(1, PER_OWNER - min(asked_by_victim.values())), lab)
        # Kill an engine process at random moments, and start another.
        deadline = time.monotonic() + 600
        while any(p.poll() is None for p in holders) and time.monotonic() < deadline:
            time.sleep(rng.uniform(2, 6))
            victim = rng.randrange(2)
            os.kill(engines[victim].pid, signal.SIGKILL)
            engines[victim].wait()
            kills["engine"] += 1
            engines[victim] = _engine_process(url, log, lab)
        for proc in holders:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
            reports.update(json.loads(out))
        names = set(acked.read_text().split())
        wait_for(lambda: all(s in ENDED for s in _lease_states(engine).values()),
                 timeout=300, what="every lease to end")
        wait_for(lambda: not _held(engine), timeout=120, what="every hold to be let go")
    finally:
        for proc in holders:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        for proc in engines:
            stop(proc, log=log)
    states = _lease_states(engine)
    assert kills["engine"] >= 3
    assert kills["holder"] == 1
    assert done_before > 0
    # No lease lost: every id a request answered is a lease, and each ended.
    assert names <= set(states), sorted(names - set(states))[:5]
    assert len(names) >= 1000
    assert {s for s in states.values()} <= set(ENDED)
    assert {"closed", "expired"} <= set(states.values())
    assert [v for r in reports.values() for v in r["violations"]] == []
    assert sum(r["refused_stale"] for r in reports.values()) > 0
    _check_board_histories(engine)
    store.dispose()


def _asked_by(engine: Engine, owners: list[str]) -> dict[str, int]:
    with engine.store.unit() as tx:
        return {o: len(tx.leases.list(kind="lease", owner=o, limit=10_000)) for o in owners}


def _held(engine: Engine) -> dict:
    with engine.store.unit() as tx:
        return tx.leases.holds()


def _check_board_histories(engine: Engine) -> None:
    """Walk every board's history in order: a hold only when nobody holds
    it, a give-back only by its holder, and after a give-back the board
    reaches ready through the return path (the states between are the
    return path's) before the next hold."""
    query = (select(machines_table.c.name, history.c.id, history.c.event,
                    history.c.from_state, history.c.to_state, history.c.payload)
             .join(machines_table, machines_table.c.id == history.c.machine_id)
             .where(machines_table.c.kind == "board").order_by(history.c.id))
    with engine.store.sa.begin() as conn:
        rows = conn.execute(query).all()
    per_board: dict[str, list] = defaultdict(list)
    for row in rows:
        per_board[row.name].append(row)
    holds = returns = 0
    problems: list[str] = []
    return_path = {"power_cycling", "rebooting", "pinging", "returning", "pxe_configuring",
                   "check_queued", "checking", "judging"}
    for board, entries in per_board.items():
        holder: str | None = None
        going_home = False
        for e in entries:
            lease = (e.payload or {}).get("lease")
            if e.event in HOLD:
                holds += 1
                if holder is not None and holder != lease:
                    problems.append(f"{board}#{e.id}: {lease} took it while {holder} held it")
                if going_home:
                    problems.append(f"{board}#{e.id}: {lease} took it before it came home")
                holder = lease
            elif e.event in GIVE_BACK:
                returns += 1
                if holder != lease:
                    problems.append(f"{board}#{e.id}: {lease} gave it back; {holder} held it")
                holder, going_home = None, True
            elif going_home:
                if e.to_state == "ready":
                    going_home = False
                elif e.to_state not in return_path:
                    problems.append(f"{board}#{e.id}: off the return path to {e.to_state}")
            elif holder is not None and e.event not in ("reboot", "reimage") and \
                    e.from_state == "leased":
                problems.append(f"{board}#{e.id}: {e.event} moved a held board")
        assert holder is None, f"{board} is still held by {holder}"
    assert problems == []
    assert holds >= 1000
    assert returns >= 1000
