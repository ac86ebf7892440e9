"""An engine process running power operations, for the controller test.

    python -m tests.power.cycler URL --owner NAME --start-at FILE --seconds N

Waits for FILE (so that both processes start at once), then leases and runs
operations with four threads until every power cycle is done or N seconds
pass;
prints how many it leased.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sqlalchemy import func, select

from corral.engine.core import Engine
from corral.engine.worker import OperationWorker
from corral.machines import MachineSet, load_definitions
from corral.operations.base import board_handlers
from corral.operations.simulated import SimulatedLab
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.power.controllers import ControllerSlots
from corral.power.drivers import SimulatedPower, protocol_drivers
from corral.power.service import PowerOperations
from corral.store import open_store
from corral.store.schema import operations


def _unfinished(engine: Engine) -> int:
    with engine.store.sa.begin() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.count()).select_from(operations).where(
            operations.c.kind == "power_cycle",
            operations.c.status.in_(("pending", "running")))).scalar_one())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--owner", required=True)
    parser.add_argument("--start-at", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    store = open_store(args.url)
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    lab = SimulatedLab()
    power = PowerOperations({**protocol_drivers(), "simulated": SimulatedPower(lab)},
                            default="simulated", slots=ControllerSlots(store, engine.clock),
                            verify_interval=0.1)
    worker = OperationWorker(engine, board_handlers(power.handlers(), lab, lab),
                             owner=args.owner, threads=4)
    while not args.start_at.exists():
        time.sleep(0.01)
    deadline = time.monotonic() + args.seconds
    leased = 0
    while time.monotonic() < deadline and _unfinished(engine):
        leased += worker.dispatch()
        time.sleep(0.05)
    worker.shutdown()
    print(f"leased {leased}")


if __name__ == "__main__":
    main()
