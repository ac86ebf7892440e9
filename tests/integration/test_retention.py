"""Retention: old history and finished operations are pruned by age, in small
batches, keeping each machine's newest history row; by default nothing is."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from corral.store.schema import history, operations
from tests.integration.helpers import firing

ROOT = Path(__file__).resolve().parents[2]
CORRAL = str(Path(sys.executable).with_name("corral"))
DAY = 86400


def counts(engine) -> tuple[int, int]:
    with engine.store.sa.begin() as conn:
        return (conn.execute(select(func.count()).select_from(history)).scalar_one(),
                conn.execute(select(func.count()).select_from(operations)).scalar_one())


def busy_boards(engine, clock, names=("b1", "b2", "b3")) -> None:
    """Boards with a few events each (and their entry operations)."""
    for name in names:
        engine.create("board", name)
        engine.force_state("board", name, "ready", actor="t", reason="t")
        for event in ("maintenance", "leave_maintenance", "power_cycle_ok"):
            engine.fire("board", name, event, **firing(event))
            clock.advance(1)


def test_nothing_is_pruned_unless_asked(engine, clock):
    busy_boards(engine, clock)
    before = counts(engine)
    clock.advance(400 * DAY)
    assert engine.sweeper.prune() == {"history": 0, "operations": 0, "consoles": 0}
    assert counts(engine) == before


def test_old_history_goes_in_batches_and_every_machine_keeps_its_newest_row(engine, clock):
    busy_boards(engine, clock)
    clock.advance(10 * DAY)
    engine.force_state("board", "b1", "maintenance", actor="t", reason="recent")
    total, _ = counts(engine)
    pruned = engine.sweeper.prune(history_older_than=timedelta(days=7), batch=2)
    # b1 keeps only its recent row; b2 and b3 keep their newest (old) one.
    assert pruned["history"] == total - 3
    for name in ("b1", "b2", "b3"):
        [entry] = engine.history("board", name)
        row = engine.get("board", name)
        assert (entry.to_state, entry.epoch) == (row.state, row.epoch)
    assert engine.history("board", "b1")[0].reason == "recent"
    # Again: nothing more is old enough.
    assert engine.sweeper.prune(history_older_than=timedelta(days=7), batch=2)["history"] == 0


def test_finished_operations_go_and_pending_ones_stay(engine, clock):
    busy_boards(engine, clock, names=("b1",))
    leased = engine.outbox.lease_operations(owner="t", limit=100, lease_seconds=60)
    assert leased
    for op in leased[:-1]:
        engine.outbox.report_operation(op, ok=True)
    clock.advance(3 * DAY)
    engine.force_state("board", "b1", "power_cycling", actor="t", reason="new operation")
    with engine.store.sa.begin() as conn:
        before = dict(conn.execute(select(operations.c.status, func.count())
                                   .group_by(operations.c.status)).all())
    pruned = engine.sweeper.prune(operations_older_than=timedelta(days=1), batch=1)
    with engine.store.sa.begin() as conn:
        after = dict(conn.execute(select(operations.c.status, func.count())
                                  .group_by(operations.c.status)).all())
    finished = sum(n for status, n in before.items() if status in ("done", "failed", "stale"))
    assert pruned["operations"] == finished > 0
    assert after == {s: n for s, n in before.items() if s in ("pending", "running")}


def test_corral_prune_once_uses_the_retention_settings(engine, clock, migrated_url):
    # The engine's clock is months behind the real one: its rows are old.
    busy_boards(engine, clock)
    total, _ = counts(engine)
    env = os.environ | {"CORRAL_DATABASE_URL": migrated_url, "CORRAL_HISTORY_RETENTION_DAYS": "30",
                        "CORRAL_OPERATION_RETENTION_DAYS": "30"}
    result = subprocess.run([CORRAL, "prune", "--once"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"history rows pruned: {total - 3}, operations pruned: ")
    assert counts(engine)[0] == 3
    keep = subprocess.run([CORRAL, "prune", "--once"], cwd=ROOT,
                          env=os.environ | {"CORRAL_DATABASE_URL": migrated_url},
                          capture_output=True, text=True, timeout=120)
    assert keep.returncode == 0, keep.stderr
    assert "nothing to prune: history_retention_days and operation_retention_days are 0" \
        in keep.stdout
