"""Shared set-up for benchmarks: a scratch PostgreSQL database and pgbench."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from corral.store import open_store

ADMIN_URL = os.environ.get("CORRAL_BENCH_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


def create_database() -> str:
    name = f"corral_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@contextmanager
def scratch_database() -> Iterator[str]:
    """A migrated scratch database, dropped afterwards."""
    url = create_database()
    try:
        store = open_store(url)
        store.upgrade()
        store.dispose()
        yield url
    finally:
        drop_database(url)


def pgbench_binary() -> str:
    found = shutil.which("pgbench") or next(iter(sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None)
    if not found:
        raise SystemExit("pgbench not found (it ships with the PostgreSQL server package)")
    return found


def pgbench_tps(url: str, *, clients: int = 8, seconds: int = 15, scale: int = 10) -> float:
    """TPC-B-like without branch/teller updates (-N), on the given database."""
    binary = pgbench_binary()
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    subprocess.run([binary, "-q", "-i", "-s", str(scale), conninfo], check=True,
                   capture_output=True)
    out = subprocess.run([binary, "-N", "-c", str(clients), "-j", "2", "-T", str(seconds),
                          conninfo], check=True, capture_output=True, text=True).stdout
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if not match:
        raise SystemExit(f"could not read pgbench output:\n{out}")
    return float(match.group(1))
