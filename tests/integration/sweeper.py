"""A sweeping engine process for concurrency and crash tests.

    python -m tests.integration.sweeper URL [--batch N] [--pause S] [--start-at FILE]

Sweeps until no deadline is due, pausing between batches, and prints how many
timeouts it fired. With ``--start-at`` it waits for that file to exist first,
so several processes start together.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from corral.engine.core import Engine
from corral.logs import configure_logging
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--start-at")
    args = parser.parse_args()
    configure_logging("warning", "json")
    engine = Engine(open_store(args.url),
                    MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    if args.start_at:
        while not Path(args.start_at).exists():
            time.sleep(0.005)
    fired = 0
    while True:
        n = engine.sweeper.sweep_timeouts(batch=args.batch, max_batches=1)
        fired += n
        if n == 0:
            break
        if args.pause:
            time.sleep(args.pause)
    print(fired, flush=True)


if __name__ == "__main__":
    main()
