"""Many writers, one database: serial histories and exactly-once timeouts."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from corral.engine.core import CREATE_EVENT, FORCE_EVENT
from corral.errors import Conflict
from corral.store.schema import history, machines
from tests.integration.helpers import firing

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ["reboot", "poll_ok", "poll_failed", "power_cycle_ok", "power_cycle_failed",
          "ping_ok", "ping_failed", "maintenance", "leave_maintenance", "reimage",
          "write_pxe_config_ok", "second_stage_started", "install_ok", "install_failed"]


def replay(machine, entries):
    """Check that history entries, in id order, are a serial path through the machine."""
    state, counters, epoch = None, {}, 0
    for e in entries:
        if e.event == CREATE_EVENT:
            outcome = machine.enter("", machine.initial, CREATE_EVENT, {})
        else:
            assert e.from_state == state, f"entry {e.id} starts in {e.from_state}, not {state}"
            if e.event == FORCE_EVENT:
                outcome = machine.enter(state, e.to_state, FORCE_EVENT, counters)
            else:
                outcome = machine.compute(state, counters, e.event)
        assert outcome.to_state == e.to_state, f"entry {e.id}: {e.event} from {state}"
        epoch += 1 if outcome.entered else 0
        assert e.epoch == epoch, f"entry {e.id}: epoch {e.epoch}, expected {epoch}"
        state, counters = outcome.to_state, dict(outcome.counters)
    return state, counters, epoch


def test_eight_threads_on_one_board_leave_a_serial_history(server_engine, machines):
    engine = server_engine
    engine.create("board", "b1")
    engine.force_state("board", "b1", "ready", actor="t", reason="t")
    accepted = Counter()
    errors = []

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            try:
                event = rng.choice(EVENTS)
                engine.fire("board", "b1", event, **firing(event))
                accepted[seed] += 1
            except Conflict:
                pass
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(accepted.values()) > 100
    entries = list(reversed(engine.history("board", "b1", limit=10_000)))
    assert len(entries) == sum(accepted.values()) + 2
    state, counters, epoch = replay(machines["board"], entries)
    row = engine.get("board", "b1")
    assert (row.state, row.counters, row.epoch) == (state, counters, epoch)


def test_two_processes_sweep_ten_thousand_deadlines_exactly_once(server_engine, server_migrated_url,
                                                                 tmp_path):
    engine, migrated_url = server_engine, server_migrated_url
    engine.import_machines("board", {f"b{i:05d}": {} for i in range(10_000)})
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-m", "tests.integration.sweeper", migrated_url,
                               "--batch", "200", "--start-at", str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()
    fired = [int(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(fired) == 10_000
    with engine.store.sa.begin() as conn:
        per_machine = conn.execute(
            select(history.c.machine_id, func.count()).where(history.c.event == "timeout")
            .group_by(history.c.machine_id)).all()
        states = conn.execute(select(machines.c.state, func.count())
                              .group_by(machines.c.state)).all()
    assert len(per_machine) == 10_000
    assert {n for _, n in per_machine} == {1}
    assert states == [("check_queued", 10_000)]
