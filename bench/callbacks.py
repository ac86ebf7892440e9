"""HTTP callbacks per second against PostgreSQL, beside pgbench in the same run.

    python -m bench.callbacks [--seconds 10] [--clients 64]   (part of `make bench`)

Starts `corral serve --role api` on a scratch database, gives every client its
own boards and board tokens, and has 64 concurrent clients (keep-alive
connections on asyncio, in two load-generating processes) post events on
loopback, alternating
`maintenance` / `leave_maintenance` so every other event writes an outbox row.
Then `pgbench -N -c 8` on the same database. The load generators share the
two cores with the server and PostgreSQL; their CPU is part of the cost.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import pgbench_tps, scratch_database
from corral.engine.core import Engine
from corral.logs import configure_logging
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store.db import create_db_engine
from corral.tokens import TokenStore

CORRAL = str(Path(sys.executable).with_name("corral"))
BOARDS_PER_CLIENT = 4


def _engine(url: str) -> Engine:
    configure_logging("warning", "json")
    return Engine(create_db_engine(url), MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))


async def _clients(port: int, tokens: dict[str, str], first: int, count: int,
                   seconds: float) -> tuple[int, list[float]]:
    """``count`` clients, each with one keep-alive connection. A minimal HTTP/1.1
    client: a general-purpose one (httpx) spent more CPU than the server."""
    names = sorted(tokens)
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        mine = names[index * BOARDS_PER_CLIENT:(index + 1) * BOARDS_PER_CLIENT]
        i = 0
        while time.perf_counter() < stop_at:
            name = mine[i % len(mine)]
            event = ("maintenance", "leave_maintenance")[(i // len(mine)) % 2]
            request = (f"POST /api/v1/boards/{name}/events/{event} HTTP/1.1\r\n"
                       f"Host: 127.0.0.1\r\nAuthorization: Bearer {tokens[name]}\r\n"
                       "Content-Length: 0\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if b" 200 " not in status:
                raise RuntimeError(f"{status!r}: {body!r}")
            done += 1
            i += 1
        writer.close()

    await asyncio.gather(*(client(i) for i in range(first, first + count)))
    return done, latencies


def _generator(port: int, tokens: dict[str, str], first: int, count: int, seconds: float,
               start: Any, out: Any) -> None:
    start.wait()
    out.put(asyncio.run(_clients(port, tokens, first, count, seconds)))


def bench_callbacks(url: str, seconds: float, clients: int, processes: int = 1
                    ) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    names = [f"cb-{i:04d}" for i in range(clients * BOARDS_PER_CLIENT)]
    engine = _engine(url)
    with engine.db.begin() as conn:
        conn.exec_driver_sql("TRUNCATE machines, history, operations, tokens, "
                             "idempotency_keys RESTART IDENTITY")
    engine.import_machines("board", {n: {} for n in names})
    for n in names:
        engine.force_state("board", n, "power_cycling", actor="bench", reason="set up")
    store = TokenStore(engine.db)
    tokens = {n: store.issue_for_board(n) for n in names}
    engine.db.dispose()
    env = os.environ | {"CORRAL_DATABASE_URL": url, "CORRAL_LOG_LEVEL": "warning",
                        "CORRAL_HTTP_THREADS": str(max(64, clients)),
                        "CORRAL_HTTP_PROCESSES": str(processes)}
    server = subprocess.Popen([CORRAL, "serve", "--role", "api", "--listen",
                               f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        # Extra API processes start in fresh interpreters: let them all listen.
        time.sleep(2 * (processes - 1))
        start, out = mp.Event(), mp.Queue()
        half = clients // 2
        procs = [mp.Process(target=_generator, args=(port, tokens, first, count, seconds,
                                                     start, out))
                 for first, count in ((0, half), (half, clients - half))]
        for p in procs:
            p.start()
        time.sleep(1)
        start.set()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    total = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    return {"per_s": total / seconds, "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--processes", default="1,2",
                        help="API process counts to measure (http_processes), e.g. 1,2")
    args = parser.parse_args()
    with scratch_database() as url:
        for processes in (int(p) for p in args.processes.split(",")):
            runs = []
            for _ in range(args.repeat):
                cb = bench_callbacks(url, args.seconds, args.clients, processes)
                tps = pgbench_tps(url, clients=8, seconds=int(args.seconds))
                runs.append((cb["per_s"] / tps, cb, tps))
            ratio, cb, tps = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
            print(f"(c) HTTP callbacks, {args.clients} clients, {processes} API "
                  f"process(es): {cb['per_s']:7.0f} req/s (p50 {cb['p50_ms']:.1f} ms, "
                  f"p99 {cb['p99_ms']:.1f} ms); pgbench -N 8 clients {tps:.0f} TPS; "
                  f"ratio {ratio:.2f} (median of {args.repeat}; all: "
                  f"{', '.join(f'{r[0]:.2f}' for r in runs)})", flush=True)


if __name__ == "__main__":
    main()
