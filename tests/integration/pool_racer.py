"""A process of jobs racing for pools, for the pool concurrency test.

    python -m tests.integration.pool_racer URL --jobs job-1,job-2 --rounds N --start-at FILE

Each job runs in its own thread: it takes a pool (a named one first, so that
jobs collide on the same row, else any free one), checks that it is the
holder, holds it a moment, releases everything, and repeats. Prints one JSON
line: how many pools each job took and every violation it saw.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from pathlib import Path

from corral.engine.core import Engine
from corral.errors import Conflict
from corral.logs import configure_logging
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.pools import PoolService
from corral.store import open_store


def run_job(pools: PoolService, job: str, names: list[str], rounds: int, seed: int,
            report: dict) -> None:
    rng = random.Random(seed)
    taken = conflicts = 0
    violations: list[str] = []
    for _ in range(rounds):
        for _attempt in range(2000):
            try:
                if rng.random() < 0.5:
                    held = pools.acquire(job, rng.choice(names), actor=job).pools
                else:
                    held = pools.acquire_any(job, fabric="race", actor=job).pools
                break
            except Conflict:
                conflicts += 1
                time.sleep(rng.uniform(0.001, 0.005))
        else:
            violations.append(f"{job} never got a pool")
            continue
        taken += 1
        with pools.engine.store.unit() as tx:
            for name in held:
                holder = tx.pools.holder(name)
                if holder != job:
                    violations.append(f"{job} took {name} but {holder} holds it")
        time.sleep(rng.uniform(0.001, 0.01))
        released = pools.release_all(job, actor=job)
        if sorted(released) != sorted(held):
            violations.append(f"{job} held {held} but released {released}")
    report[job] = {"taken": taken, "conflicts": conflicts, "violations": violations}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--start-at", required=True)
    args = parser.parse_args()
    configure_logging("warning", "json")
    engine = Engine(open_store(args.url, pool_size=12),
                    MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    pools = PoolService(engine)
    names = [r.name for r in engine.list_machines("pool")]
    jobs = args.jobs.split(",")
    report: dict = {}
    while not Path(args.start_at).exists():
        time.sleep(0.005)
    threads = [threading.Thread(target=run_job, args=(pools, job, names, args.rounds, i,
                                                      report))
               for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
