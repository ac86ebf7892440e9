"""HTTP callbacks per second against PostgreSQL, beside pgbench in the same run.

    python -m bench.callbacks [--seconds 10] [--clients 64]   (part of `make bench`)

Starts `corral serve --role api` on a scratch database, gives every client its
own boards, each with its own token, and has 64 concurrent clients (keep-alive
connections on asyncio, in two load-generating processes) post events on
loopback, alternating
`maintenance` / `leave_maintenance` so every other event writes an outbox row.
The tokens are operator tokens, one per board: those are operator events
(`by: operator`), and a board's own token may fire only its second stage's
events, which do not loop; the route, the token cache and the commit are the
same either way.
`pgbench -N -c 8` runs on the same database before and after every callback
run, and the run's ratio is to the mean of those two (the VM's speed drifts).
The load generators share the two cores with the server and PostgreSQL; their
CPU is part of the cost.
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
from typing import Any, cast

import httpx
import uvloop

from bench.common import pgbench_tps, scratch_database
from corral.engine.core import Engine
from corral.logs import configure_logging
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from corral.tokens import TokenStore

CORRAL = str(Path(sys.executable).with_name("corral"))
BOARDS_PER_CLIENT = 4


def _engine(url: str) -> Engine:
    configure_logging("warning", "json")
    return Engine(open_store(url), MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))


class _Client(asyncio.Protocol):
    """One client: a keep-alive connection with one request in flight at a time,
    on the board names it owns. A bare protocol rather than streams or a
    general-purpose client (httpx spent more CPU than the server): the load
    generators share the two cores with what they measure."""

    def __init__(self, names: list[str], tokens: dict[str, str], stop_at: float,
                 latencies: list[float], done: asyncio.Future[None]) -> None:
        self.requests = [
            [(f"POST /api/v1/boards/{name}/events/{event} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              f"Authorization: Bearer {tokens[name]}\r\nContent-Length: 0\r\n\r\n").encode()
             for name in names]
            for event in ("maintenance", "leave_maintenance")]
        self.stop_at = stop_at
        self.latencies = latencies
        self.done = done
        self.buffer = b""
        self.sent = 0
        self.count = 0
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        i = self.sent
        per_round = len(self.requests[0])
        self.t0 = time.perf_counter()
        self.transport.write(self.requests[(i // per_round) % 2][i % per_round])
        self.sent += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        if len(self.buffer) < end + 4 + length:
            return
        now = time.perf_counter()
        if not head.startswith(b"http/1.1 200 "):
            self.done.set_exception(RuntimeError(self.buffer[:end + 4 + length].decode()))
            self.transport.close()
            return
        self.buffer = self.buffer[end + 4 + length:]
        self.latencies.append(now - self.t0)
        self.count += 1
        if now < self.stop_at:
            self._send()
        else:
            self.transport.close()
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("the server closed the connection"))


async def _clients(port: int, tokens: dict[str, str], first: int, count: int,
                   seconds: float) -> tuple[int, list[float]]:
    """``count`` clients on this process's event loop."""
    loop = asyncio.get_running_loop()
    names = sorted(tokens)
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    clients = []
    for index in range(first, first + count):
        done = loop.create_future()
        mine = names[index * BOARDS_PER_CLIENT:(index + 1) * BOARDS_PER_CLIENT]
        client = _Client(mine, tokens, stop_at, latencies, done)
        await loop.create_connection(lambda client=client: client, "127.0.0.1", port)
        clients.append(client)
    await asyncio.gather(*(client.done for client in clients))
    return sum(client.count for client in clients), latencies


def _generator(port: int, tokens: dict[str, str], first: int, count: int, seconds: float,
               start: Any, out: Any) -> None:
    start.wait()
    out.put(uvloop.run(_clients(port, tokens, first, count, seconds)))


def bench_callbacks(url: str, seconds: float, clients: int, processes: int = 1
                    ) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    names = [f"cb-{i:04d}" for i in range(clients * BOARDS_PER_CLIENT)]
    engine = _engine(url)
    with engine.store.sa.begin() as conn:
        conn.exec_driver_sql("TRUNCATE machines, history, operations, tokens, "
                             "idempotency_keys RESTART IDENTITY")
    engine.import_machines("board", {n: {} for n in names})
    for n in names:
        engine.force_state("board", n, "power_cycling", actor="bench", reason="set up")
    store = TokenStore(engine.store)
    tokens = {n: store.issue(f"bench-{n}", "operator") for n in names}
    engine.store.dispose()
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
            # pgbench before and after every callback run: each run is set
            # against the mean of the two around it, so a VM that drifts
            # faster or slower during the run does not tilt the ratio.
            tps = [pgbench_tps(url, clients=8, seconds=int(args.seconds))]
            runs = []
            for _ in range(args.repeat):
                cb = bench_callbacks(url, args.seconds, args.clients, processes)
                tps.append(pgbench_tps(url, clients=8, seconds=int(args.seconds)))
                baseline = (tps[-2] + tps[-1]) / 2
                runs.append((cb["per_s"] / baseline, cb, baseline))
            ratio, cb, baseline = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
            print(f"(c) HTTP callbacks, {args.clients} clients, {processes} API "
                  f"process(es): {cb['per_s']:7.0f} req/s (p50 {cb['p50_ms']:.1f} ms, "
                  f"p99 {cb['p99_ms']:.1f} ms); pgbench -N 8 clients {baseline:.0f} TPS "
                  f"(mean of the runs before and after); ratio {ratio:.2f} (median of "
                  f"{args.repeat}; all: {', '.join(f'{r[0]:.2f}' for r in runs)}; pgbench "
                  f"runs: {', '.join(f'{t:.0f}' for t in tps)})", flush=True)


if __name__ == "__main__":
    main()
