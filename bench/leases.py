"""Leases: the scheduler's pass at scale, and the fair share two owners get.

    python -m bench.leases [--boards 5000] [--queued 50000]

(a) The pass at 5,000 boards, all held by active leases, with 50,000 leases
    queued (the steady state of a busy lab: nothing is free, and every pass
    must still look), on PostgreSQL; the median of 10 passes, beside
    pgbench's TPS on the same server in the same run.
(b) Fair share: two owners of equal weight each keep 50 requests queued for
    4 boards (durations 2-20 min, simulated time); the board-time each got
    and the longest wait.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from bench.common import pgbench_tps, scratch_database
from corral.config import Settings
from corral.engine.core import Engine
from corral.leases import Caller, LeaseRequest, LeaseService, install
from corral.leases.scheduler import LeaseScheduler
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from corral.store.schema import board_holds, lease_boards, leases, machines


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _machine(kind: str, name: str, state: str, now: datetime, **extra: object) -> dict:
    return {"kind": kind, "name": name, "state": state, "state_entered_at": now,
            "deadline": extra.pop("deadline", None), "counters": {}, "epoch": 1,
            "attrs": extra.pop("attrs", {}), "created_at": now, "updated_at": now,
            "vars": {}}


def _lease(i: int, owner: str, now: datetime, **extra: object) -> dict:
    return {"id": i, "name": f"lease-{i}", "owner": owner, "share": owner, "priority": 0,
            "board": None, "selector": "arch=arm64", "count": 1, "release": None,
            "duration_s": 3600, "heartbeat_s": None, "on_return": "power_cycle",
            "purpose": None, "requested_at": now - timedelta(seconds=i % 3600),
            "wait_until": now + timedelta(days=1), "activated_at": extra.get("activated_at"),
            "expires_at": extra.get("expires_at"), "heartbeat_at": None, "warned_at": None,
            "ended_by": None, "ended_at": None}


def pass_at_scale(url: str, boards: int, queued: int, free: int = 0,
                  free_arch: str = "riscv64", count: int = 1) -> float:
    """The median pass with ``boards`` boards held and ``queued`` leases
    queued for ``count`` arm64 boards each, and ``free`` more boards of
    ``free_arch`` ready."""
    store = open_store(url)
    clock = Clock()
    now = clock.now
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)), clock=clock)
    install(engine)
    with store.unit() as tx:
        conn = tx.conn
        conn.execute(insert(machines), [_machine("board", f"b{i:05}", "leased", now,
                                                 attrs={"arch": "arm64"})
                                        for i in range(boards)])
        conn.execute(insert(leases), [_lease(i + 1, f"owner-{i % 20}", now, activated_at=now,
                                             expires_at=now + timedelta(hours=1))
                                      for i in range(boards)])
        conn.execute(insert(machines), [_machine("lease", f"lease-{i + 1}", "active", now,
                                                 deadline=now + timedelta(hours=1))
                                        for i in range(boards)])
        conn.execute(insert(board_holds), [{"board": f"b{i:05}", "epoch": 1,
                                            "lease_id": i + 1, "since": now}
                                           for i in range(boards)])
        conn.execute(insert(lease_boards), [{"lease_id": i + 1, "board": f"b{i:05}",
                                             "epoch": 1, "held_at": now, "released_at": None}
                                            for i in range(boards)])
        if free:
            conn.execute(insert(machines), [_machine("board", f"f{i:05}", "ready", now,
                                                     attrs={"arch": free_arch})
                                            for i in range(free)])
        first = boards + 1
        conn.execute(insert(leases), [{**_lease(first + i, f"owner-{i % 20}", now),
                                       "count": count} for i in range(queued)])
        conn.execute(insert(machines), [_machine("lease", f"lease-{first + i}", "queued", now)
                                        for i in range(queued)])
    with store.unit() as tx:
        tx.conn.exec_driver_sql("ANALYZE")
    scheduler = LeaseScheduler(engine, Settings())
    times = []
    for _ in range(10):
        started = time.perf_counter()
        scheduler.run_pass()
        times.append(time.perf_counter() - started)
    store.dispose()
    return statistics.median(times)


def fair_share(url: str, seed: int = 7) -> dict[str, object]:
    from corral.app import build_handlers, build_worker

    store = open_store(url)
    clock = Clock()
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)), clock=clock)
    install(engine)
    settings = Settings(sim_operation_seconds=0, lease_quota_queued=100)
    scheduler = LeaseScheduler(engine, settings)
    service = LeaseService(engine, settings, kick=scheduler.run_pass)
    engine.import_machines("board", {f"fs-{i}": {"arch": "arm64"} for i in range(4)},
                           actor="bench", reason="fair share")
    for i in range(4):
        engine.force_state("board", f"fs-{i}", "ready", actor="bench", reason="fair share")
    worker = build_worker(engine, settings, build_handlers(settings, simulate=True,
                                                           engine=engine))
    rng = random.Random(seed)
    owners = {o: Caller(name=o, role="user") for o in ("alice", "bob")}
    remaining = {o: 150 for o in owners}
    holding: dict[str, datetime] = {}
    start = clock.now
    for _ in range(2000):
        for owner, caller in owners.items():
            queued = [x for x in service.list(owner=owner, states=["queued"])]
            while len(queued) < 50 and remaining[owner]:
                spec = LeaseRequest(selector="arch=arm64", duration=rng.randint(120, 1200),
                                    on_return="power_cycle")
                queued.append(service.request(spec, caller))
                remaining[owner] -= 1
        for lease in service.list(states=["active"]):
            holding.setdefault(lease["id"], clock.now)
        if not any(remaining.values()) and not service.list(open_only=True):
            break
        clock.now += timedelta(seconds=30)
        engine.sweeper.sweep_timeouts()
        worker.run_pending()
        scheduler.run_pass()
    ended = clock.now
    with store.unit() as tx:
        usage = tx.leases.usage(start, ended)
        rows = tx.leases.list(kind="lease", states=None, limit=10**6)
    waits = [(r["activated_at"] - r["requested_at"]).total_seconds()
             for r in rows if r["activated_at"] is not None]
    worker.shutdown()
    store.dispose()
    total = sum(usage.values()) or 1.0
    return {"board_seconds": {k: round(v) for k, v in usage.items()},
            "share": {k: round(v / total, 3) for k, v in usage.items()},
            "longest_wait_s": max(waits) if waits else None,
            "leases": len(rows), "simulated_s": (ended - start).total_seconds()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boards", type=int, default=5000)
    parser.add_argument("--queued", type=int, default=50000)
    args = parser.parse_args()
    with scratch_database() as url:
        tps = pgbench_tps(url, seconds=10)
    with scratch_database() as url:
        seconds = pass_at_scale(url, args.boards, args.queued)
    print(f"(a) lease pass at {args.boards} boards held, {args.queued} queued: "
          f"{seconds * 1000:.1f} ms median of 10 (goal < 100 ms); pgbench {tps:.0f} TPS in "
          f"the same run; passes/s over pgbench TPS: {1 / seconds / tps:.4f}x")
    with scratch_database() as url:
        seconds = pass_at_scale(url, args.boards, args.queued, free=1)
    print(f"(a') the same with one free board no queued lease can use: "
          f"{seconds * 1000:.1f} ms median of 10")
    with scratch_database() as url:
        seconds = pass_at_scale(url, args.boards, args.queued, free=1, free_arch="arm64",
                                count=2)
    print(f"(a'') the same with one free board every queued lease could use but none can "
          f"have (each asks for 2; the whole queue is read and ranked): "
          f"{seconds * 1000:.1f} ms median of 10")
    with scratch_database() as url:
        print(f"(b) fair share, two owners x 150 requests for 4 boards: {fair_share(url)}")


if __name__ == "__main__":
    main()
