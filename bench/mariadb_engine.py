"""Engine benchmarks on MariaDB, beside sysbench on the same server in the same run.

    make bench                      # or: python -m bench.mariadb_engine [--seconds 10]

(a) ``fire`` events/s from 8 concurrent workers (8 threads of one engine with
    group commit, and 8 single-threaded processes), next to ``sysbench
    oltp_write_only`` TPS with 8 threads on a database of its own; the ratio
    is the figure that matters.
(b) 100,000 boards all due: timeouts fired per second by 1 and by 2 sweeping
    processes.

Needs a MariaDB server (``CORRAL_BENCH_MARIADB_URL``, default
``mysql://root@127.0.0.1:3306/``) and Debian's ``sysbench``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
from sqlalchemy.engine import make_url

from bench.run import _median_run, bench_fire_processes, bench_fire_threads, bench_sweep
from corral.config import Settings
from corral.store import open_store

ADMIN_URL = os.environ.get("CORRAL_BENCH_MARIADB_URL", "mysql://root@127.0.0.1:3306/")


def _admin() -> pymysql.Connection:  # type: ignore[type-arg]
    url = make_url(ADMIN_URL)
    return pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                           user=url.username or "root", password=url.password or "",
                           autocommit=True)


@contextmanager
def scratch_database(prefix: str = "corral_bench", migrate: bool = True) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = _admin()
    admin.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    url = ADMIN_URL.rstrip("/") + f"/{name}"
    try:
        if migrate:
            store = open_store(url)
            store.upgrade()
            store.dispose()
        yield url
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def sysbench_tps(*, threads: int = 8, seconds: int = 10) -> float:
    """``sysbench oltp_write_only`` transactions/s on a scratch database."""
    binary = shutil.which("sysbench")
    if not binary:
        raise SystemExit("sysbench not found (Debian: apt-get install sysbench)")
    url = make_url(ADMIN_URL)
    with scratch_database("corral_sysbench", migrate=False) as db_url:
        common = [binary, "oltp_write_only", "--db-driver=mysql",
                  f"--mysql-host={url.host or '127.0.0.1'}", f"--mysql-port={url.port or 3306}",
                  f"--mysql-user={url.username or 'root'}",
                  f"--mysql-password={url.password or ''}",
                  f"--mysql-db={db_url.rsplit('/', 1)[1]}", "--tables=4", "--table-size=10000"]
        subprocess.run([*common, "prepare"], check=True, capture_output=True)
        out = subprocess.run([*common, f"--threads={threads}", f"--time={seconds}", "run"],
                             check=True, capture_output=True, text=True).stdout
    match = re.search(r"transactions:\s+\d+\s+\(([0-9.]+) per sec", out)
    if not match:
        raise SystemExit(f"could not read sysbench output:\n{out}")
    return float(match.group(1))


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
        print(f"MariaDB database: {url.rsplit('/', 1)[1]}  cpus: {os.cpu_count()}  "
              f"median of {args.repeat} runs")
        rows: dict[str, list[dict[str, Any]]] = {"threads": [], "processes": [], "sysbench": []}
        for _ in range(args.repeat):
            rows["threads"].append(bench_fire_threads(url, args.seconds))
            rows["processes"].append(bench_fire_processes(url, args.seconds))
            rows["sysbench"].append({"tps": sysbench_tps(seconds=int(args.seconds))})
        tps = statistics.median(s["tps"] for s in rows["sysbench"])
        print(f"    sysbench oltp_write_only, 8 threads:     {tps:9.0f} TPS")
        for shape, label in (("threads", "8 threads, group commit"),
                             ("processes", "8 processes, one commit per event")):
            ratio = statistics.median(r["events_per_s"] / s["tps"] for r, s
                                      in zip(rows[shape], rows["sysbench"], strict=True))
            fire = _median_run(rows[shape], "events_per_s")
            print(f"(a) fire, {label + ':':<34} {fire['events_per_s']:7.0f} events/s, "
                  f"ratio {ratio:.2f} x sysbench "
                  f"(p50 {fire['p50_ms']:.2f} ms, p99 {fire['p99_ms']:.2f} ms)")
        for n in (1, 2):
            runs = [bench_sweep(url, args.boards, n, args.batch, args.threads)
                    for _ in range(args.repeat)]
            sweep = _median_run(runs, "timeouts_per_s")
            print(f"(b) {args.boards} due, {n} process(es) x {args.threads} sweep threads: "
                  f"{sweep['timeouts_per_s']:7.0f} timeouts/s ({sweep['seconds']:.1f} s; "
                  f"all runs: {', '.join(str(round(r['timeouts_per_s'])) for r in runs)}; "
                  f"ratio {sweep['timeouts_per_s'] / tps:.2f} x sysbench TPS)")


if __name__ == "__main__":
    main()
