"""Engine benchmarks on PostgreSQL, each beside a baseline measured in the same run.

    make bench                      # or: python -m bench.run [--seconds 15]

(a) ``fire`` events/s from 8 concurrent workers, next to pgbench -N TPS with 8
    clients on the same database; the ratio is the figure that matters. Two
    shapes: 8 threads of one engine process (group commit shares
    transactions), and 8 single-threaded processes (one commit per event).
(b) 100,000 boards all due: timeouts fired per second by 1 and by 2 sweeping
    processes.
Results go to stdout; docs/performance.md records them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import statistics
import threading
import time
from typing import Any

import psycopg

from bench.common import pgbench_tps, scratch_database
from corral.config import Settings
from corral.engine.core import Engine
from corral.errors import Conflict
from corral.logs import configure_logging
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store

WORKERS = 8
BOARDS_PER_WORKER = 50


def _engine(url: str) -> Engine:
    configure_logging(os.environ.get("CORRAL_BENCH_LOG_LEVEL", "warning"), "json")
    return Engine(open_store(url, pool_size=2),
                  MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))


def _fire_loop(engine: Engine, index: int, seconds: float, start: Any, out: Any) -> None:
    names = [f"w{index}-b{i}" for i in range(BOARDS_PER_WORKER)]
    # Alternate maintenance <-> leave_maintenance: every other event enters
    # power_cycling and writes an operation, as a real event mix does.
    events = ("maintenance", "leave_maintenance")
    count, latencies, i = 0, [], 0
    start.wait()
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        name = names[i % len(names)]
        event = events[(i // len(names)) % 2]
        t0 = time.perf_counter()
        try:
            engine.fire("board", name, event, source="operator")
        except Conflict:
            pass
        latencies.append(time.perf_counter() - t0)
        count += 1
        i += 1
    out.put((count, latencies[::10]))


def _fire_worker(url: str, index: int, seconds: float, start: Any, out: Any) -> None:
    _fire_loop(_engine(url), index, seconds, start, out)


def _seed_fire_boards(url: str) -> None:
    engine = _engine(url)
    _truncate(engine)
    engine.import_machines("board", {f"w{w}-b{i}": {} for w in range(WORKERS)
                                     for i in range(BOARDS_PER_WORKER)})
    for row in engine.list_machines("board"):
        engine.force_state("board", row.name, "power_cycling", actor="bench", reason="set up")
    engine.store.dispose()


def _truncate(engine: Engine) -> None:
    """Bench set-up only: empty the tables an event writes."""
    with engine.store.sa.begin() as conn:
        if engine.store.backend == "postgresql":
            conn.exec_driver_sql("TRUNCATE machines, history, operations RESTART IDENTITY")
        else:
            for table in ("machines", "history", "operations"):
                conn.exec_driver_sql(f"TRUNCATE TABLE {table}")


def _summary(results: list[tuple[int, list[float]]], seconds: float) -> dict[str, float]:
    total = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    return {"events_per_s": total / seconds, "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000}


def bench_fire_processes(url: str, seconds: float) -> dict[str, float]:
    """8 worker processes, one event per transaction (no sharing across processes)."""
    _seed_fire_boards(url)
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_fire_worker, args=(url, w, seconds, start, out))
             for w in range(WORKERS)]
    for p in procs:
        p.start()
    time.sleep(2)  # let every worker connect and load its definitions
    start.set()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return _summary(results, seconds)


def bench_fire_threads(url: str, seconds: float) -> dict[str, float]:
    """8 worker threads in one engine process, with group commit."""
    _seed_fire_boards(url)
    engine = _engine(url)
    engine.group.start()
    start, out = threading.Event(), queue.Queue()
    threads = [threading.Thread(target=_fire_loop, args=(engine, w, seconds, start, out))
               for w in range(WORKERS)]
    for t in threads:
        t.start()
    start.set()
    results = [out.get() for _ in threads]
    for t in threads:
        t.join()
    engine.close()
    return _summary(results, seconds)


def _seed_due_boards(url: str, count: int) -> None:
    """Bench set-up only: 100k ready boards whose deadline has passed."""
    if not url.startswith("postgres"):
        engine = _engine(url)
        _truncate(engine)
        with engine.store.sa.begin() as conn:
            # MariaDB's sequence engine: seq_1_to_N has the rows 1..N.
            conn.exec_driver_sql(
                "INSERT INTO machines (kind, name, state, state_entered_at, deadline, counters, "
                "epoch, attrs, created_at, updated_at, vars) "
                "SELECT 'board', CONCAT('due-', seq), 'ready', "
                "UTC_TIMESTAMP(6) - INTERVAL 10 MINUTE, "
                "UTC_TIMESTAMP(6) - INTERVAL (seq %% 600) SECOND, '{}', 1, '{}', "
                f"UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), '{{}}' FROM seq_1_to_{int(count)}")
            conn.exec_driver_sql("ANALYZE TABLE machines")
        engine.store.dispose()
        return
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        conn.execute("TRUNCATE machines, history, operations RESTART IDENTITY")
        conn.execute(
            """INSERT INTO machines (kind, name, state, state_entered_at, deadline, counters,
                                     epoch, attrs, created_at, updated_at)
               SELECT 'board', 'due-' || g, 'ready', now() - interval '10 min',
                      now() - interval '1 s' * (g %% 600), '{}', 1, '{}', now(), now()
               FROM generate_series(1, %s) g""", (count,))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE machines")


def _sweep_worker(url: str, batch: int, threads: int, start: mp.Event, out: mp.Queue) -> None:
    engine = _engine(url)
    start.wait()
    out.put(engine.sweeper.sweep_timeouts(batch=batch, threads=threads))


def bench_sweep(url: str, boards: int, processes: int, batch: int, threads: int
                ) -> dict[str, float]:
    _seed_due_boards(url, boards)
    start, out = mp.Event(), mp.Queue()
    procs = [mp.Process(target=_sweep_worker, args=(url, batch, threads, start, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    time.sleep(2)
    t0 = time.perf_counter()
    start.set()
    fired = [out.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    assert sum(fired) == boards, (fired, boards)
    return {"timeouts_per_s": boards / elapsed, "seconds": elapsed, "per_process": fired}


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (odd counts) or just below it."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=3,
                        help="run each measurement this many times; report the median")
    parser.add_argument("--boards", type=int, default=100_000)
    defaults = Settings()
    parser.add_argument("--batch", type=int, default=defaults.sweep_batch)
    parser.add_argument("--threads", type=int, default=defaults.sweep_threads,
                        help="sweep threads per process (setting sweep_threads)")
    args = parser.parse_args()
    with scratch_database() as url:
        print(f"database: {url.rsplit('/', 1)[1]}  cpus: {os.cpu_count()}  "
              f"median of {args.repeat} runs")
        rows: dict[str, list[dict[str, Any]]] = {"threads": [], "processes": [], "pgbench": []}
        for _ in range(args.repeat):
            rows["threads"].append(bench_fire_threads(url, args.seconds))
            rows["processes"].append(bench_fire_processes(url, args.seconds))
            rows["pgbench"].append({"tps": pgbench_tps(url, clients=8,
                                                       seconds=int(args.seconds))})
        ratios = {shape: statistics.median(r["events_per_s"] / p["tps"]
                                           for r, p in zip(rows[shape], rows["pgbench"],
                                                           strict=True))
                  for shape in ("threads", "processes")}
        tps = statistics.median(p["tps"] for p in rows["pgbench"])
        print(f"    pgbench -N, 8 clients:                   {tps:9.0f} TPS")
        for shape, label in (("threads", "8 threads, group commit"),
                             ("processes", "8 processes, one commit per event")):
            fire = _median_run(rows[shape], "events_per_s")
            print(f"(a) fire, {label + ':':<34} {fire['events_per_s']:7.0f} events/s, "
                  f"ratio {ratios[shape]:.2f} x pgbench "
                  f"(p50 {fire['p50_ms']:.2f} ms, p99 {fire['p99_ms']:.2f} ms)")
        for n in (1, 2):
            runs = [bench_sweep(url, args.boards, n, args.batch, args.threads)
                    for _ in range(args.repeat)]
            sweep = _median_run(runs, "timeouts_per_s")
            print(f"(b) {args.boards} due, {n} process(es) x {args.threads} sweep threads: "
                  f"{sweep['timeouts_per_s']:7.0f} timeouts/s ({sweep['seconds']:.1f} s; "
                  f"all runs: {', '.join(str(round(r['timeouts_per_s'])) for r in runs)})")


if __name__ == "__main__":
    main()
