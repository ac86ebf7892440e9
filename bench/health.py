"""Health checks: a soak of the simulated lab.

    python -m bench.health [--boards 500] [--hours 1] [--flaky 0.05]

500 simulated boards behind 20 relays, on PostgreSQL, in simulated time
(10 s per round): every board is checked on enrolment and then every 3
minutes (``every_hours: 0.05``), a quarter of them at most at once. Two
kinds of flakiness are injected, in two runs:

(a) per operation: each power cycle, ping and poll fails with probability
    ``--flaky``; a step tries again within its timeout, as it does for a
    board that is still booting;
(b) per check: the same probability, but a step gets one try (its timeout
    is shorter than the pause between tries), so a flake fails the check.

In both, relay ``relay-7`` stops answering from minute 20 for 15 minutes.
Printed: checks run, boards wrongly failed (``failed_health``: every board
here is sound; the goal is 0), how long relay-7's boards were out (from the
first one unknown to the last one back), whether any of them was failed,
and the largest share of the fleet in checks at once.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import scratch_database
from corral.app import build_handlers, build_worker
from corral.config import Settings
from corral.engine.core import Engine
from corral.health.definitions import (
    Definition,
    Definitions,
    PingStep,
    PollStep,
    PowerCycleStep,
    Rules,
)
from corral.health.service import HealthPass, install
from corral.health.steps import HealthSteps
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store

ROUND = 10.0  # simulated seconds per round
OUTAGE = ("relay-7", 20 * 60.0, 15 * 60.0)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def soak(url: str, *, boards: int, hours: float, flaky: float, per_check: bool
         ) -> dict[str, Any]:
    clock = Clock()
    store = open_store(url)
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)), clock=clock)
    install(engine)
    name, start, seconds = OUTAGE
    settings = Settings(sim_operation_seconds=0, sim_power_cycle_failure=flaky,
                        sim_ping_failure=flaky, sim_poll_failure=flaky,
                        sim_controller_outage=f"{name}@{int(start)}+{int(seconds)}",
                        health_backoff=60, timeout_scale=0.0005)
    checks = Definitions.of_list([Definition(
        name="soak", steps=[PowerCycleStep(step="power_cycle"), PingStep(step="ping"),
                            PollStep(step="poll")],
        rules=Rules(every_hours=0.05, max_checking=0.25))])
    handlers = build_handlers(settings, simulate=True, engine=engine)
    # (b): a pause longer than any step's timeout leaves one try per step.
    handlers["health_check"] = HealthSteps(
        store=engine.store, definitions=checks, handlers=dict(handlers),
        timeout_scale=settings.timeout_scale, pause=0.2 if per_check else 0.001)
    worker = build_worker(engine, settings, handlers)
    health = HealthPass(engine, settings, checks)
    inventory = {f"s{i:04d}": {"arch": "arm64", "power": {"relay": f"relay-{i % 20}",
                                                         "port": i}}
                 for i in range(boards)}
    behind = {n for n, a in inventory.items() if a["power"]["relay"] == name}
    engine.import_machines("board", inventory, actor="bench", reason="soak")
    peak = 0.0
    first_out: datetime | None = None
    last_back: datetime | None = None
    began = clock.now
    wall = time.perf_counter()
    for _ in range(int(hours * 3600 / ROUND)):
        health.run_pass()
        states = {b.name: b.state for b in engine.list_machines("board")}
        peak = max(peak, sum(s in ("checking", "judging") for s in states.values()) / boards)
        worker.run_pending(limit=1000)
        health.run_pass()
        out = [b for b in behind if states[b] == "unknown"]
        if out and first_out is None:
            first_out = clock.now
        if first_out is not None and last_back is None and not out and \
                all(states[b] == "ready" for b in behind) and \
                clock.now > began + timedelta(seconds=start + seconds):
            last_back = clock.now
        clock.now += timedelta(seconds=ROUND)
        engine.sweeper.sweep_timeouts(batch=1000)
        worker.run_pending(limit=1000)
    states = {b.name: b.state for b in engine.list_machines("board")}
    with engine.store.unit() as tx:
        judged = sum(n for *_, n in tx.health.tally())
    worker.shutdown()
    store.dispose()
    return {
        "checks": judged,
        "wrongly_failed": sum(s == "failed_health" for s in states.values()),
        "relay_failed": sum(states[b] == "failed_health" for b in behind),
        "out_minutes": ((last_back - first_out).total_seconds() / 60
                        if first_out and last_back else None),
        "outage_minutes": seconds / 60,
        "peak_share": peak,
        "wall_seconds": time.perf_counter() - wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=500)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--flaky", type=float, default=0.05)
    args = parser.parse_args()
    for label, per_check in (("(a) flaky operations", False), ("(b) flaky checks", True)):
        with scratch_database() as url:
            found = soak(url, boards=args.boards, hours=args.hours, flaky=args.flaky,
                         per_check=per_check)
        out = found["out_minutes"]
        print(f"{label}: {args.boards} boards, {args.hours:g} h, {args.flaky:.0%} flaky: "
              f"{found['checks']} checks; wrongly failed {found['wrongly_failed']} "
              f"(goal 0); relay-7's {args.boards // 20} boards out "
              f"{f'{out:.1f}' if out is not None else 'until the end'} min for a "
              f"{found['outage_minutes']:g} min outage, {found['relay_failed']} of them "
              f"failed; peak in checks {found['peak_share']:.0%} of the fleet "
              f"({found['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
