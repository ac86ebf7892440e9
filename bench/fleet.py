"""A fleet of 1,000,000 boards on PostgreSQL: what operators and monitoring wait for.

    python -m bench.fleet [--boards 1000000] [--failed 10000]   (part of `make bench`)

Seeds the boards (``--failed`` of them in ``failed_pinging``) in a scratch
database, starts ``corral serve --role api`` on it, and measures, median of
``--repeat`` tries each:

- ``GET /metrics``, counted at scrape time (no recount yet) and from the
  workers' aggregate (after ``refresh_state_counts``), beside the same
  ``GROUP BY`` in psql;
- ``GET /api/v1/boards?failed=true`` (its first page) and ``corral board list
  --failed --json`` (every failed board, page by page), beside the same rows
  read by psql;
- ``corral board show`` on the database and through the server, and
  ``corral --help``: the time to start a command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg

from bench.common import scratch_database
from corral.engine.core import Engine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from corral.tokens import TokenStore

CORRAL = str(Path(sys.executable).with_name("corral"))


def seed(url: str, boards: int, failed: int) -> None:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            """INSERT INTO machines (kind, name, state, state_entered_at, deadline, counters,
                                     epoch, attrs, created_at, updated_at)
               SELECT 'board', 'board-' || lpad(g::text, 7, '0'),
                      CASE WHEN g %% (%s / %s) = 0 THEN 'failed_pinging' ELSE 'ready' END,
                      now(), CASE WHEN g %% (%s / %s) = 0 THEN NULL
                                  ELSE now() + interval '1 day' END,
                      '{}', 1, '{"arch": "amd64"}', now(), now()
               FROM generate_series(1, %s) g""", (boards, failed, boards, failed, boards))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE machines")


def timed(action: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``action`` in milliseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        action()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def psql(url: str, sql: str) -> Callable[[], object]:
    binary = shutil.which("psql") or "psql"
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    return lambda: subprocess.run([binary, "-qAt", conninfo, "-c", sql], check=True,
                                  capture_output=True)


def command(*args: str, env: dict[str, str]) -> Callable[[], object]:
    return lambda: subprocess.run([CORRAL, *args], check=True, capture_output=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=1_000_000)
    parser.add_argument("--failed", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with scratch_database() as url:
        t0 = time.perf_counter()
        seed(url, args.boards, args.failed)
        print(f"{args.boards} boards ({args.failed} failed) seeded in "
              f"{time.perf_counter() - t0:.0f} s; median of {args.repeat}")
        engine = Engine(open_store(url), MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
        token = TokenStore(engine.store).issue("bench", "viewer")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = os.environ | {"CORRAL_DATABASE_URL": url, "CORRAL_LOG_LEVEL": "warning"}
        server = subprocess.Popen([CORRAL, "serve", "--role", "api", "--listen",
                                   f"127.0.0.1:{port}"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=60,
                              headers={"Authorization": f"Bearer {token}"}) as http:
                for _ in range(100):
                    try:
                        http.get("/healthz")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                http.get("/metrics")
                live = timed(lambda: http.get("/metrics").raise_for_status(), args.repeat)
                group_by = timed(psql(url, "SELECT kind, state, count(*) FROM machines "
                                           "GROUP BY kind, state"), args.repeat)
                engine.sweeper.refresh_state_counts()
                stored = timed(lambda: http.get("/metrics").raise_for_status(), args.repeat)
                recount = timed(engine.sweeper.refresh_state_counts, 3)
                page = timed(lambda: http.get("/api/v1/boards",
                                              params={"failed": "true"}).raise_for_status(),
                             args.repeat)
            failed_rows = timed(psql(url, "SELECT * FROM machines WHERE kind = 'board' AND "
                                          "state = 'failed_pinging' ORDER BY name"),
                                args.repeat)
            listed = timed(command("board", "list", "--failed", "--json", env=env),
                           max(3, args.repeat // 2))
            show = timed(command("board", "show", "board-0000001", env=env), args.repeat)
            remote = timed(command("--url", base, "board", "show", "board-0000001",
                                   env=env | {"CORRAL_TOKEN": token}), args.repeat)
            helped = timed(command("--help", env=env), args.repeat)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            engine.store.dispose()
        print(f"GET /metrics, counted at scrape time:    {live:7.1f} ms "
              f"(psql GROUP BY: {group_by:.1f} ms)")
        print(f"GET /metrics, from the aggregate:        {stored:7.1f} ms "
              f"(a recount: {recount:.1f} ms, every state_count_interval)")
        print(f"GET /api/v1/boards?failed=true (page 1): {page:7.1f} ms")
        print(f"corral board list --failed --json:       {listed:7.1f} ms for {args.failed} "
              f"boards (psql, the same rows: {failed_rows:.1f} ms)")
        print(f"corral board show NAME:                  {show:7.1f} ms")
        print(f"corral --url URL board show NAME:        {remote:7.1f} ms")
        print(f"corral --help:                           {helped:7.1f} ms")


if __name__ == "__main__":
    main()
