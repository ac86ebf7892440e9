"""Which MySQL/MariaDB driver: the same event-shaped transaction through each.

Each iteration is what one event costs the store: lock a machine row by key
(``SELECT ... FOR UPDATE``), update it, insert a history row with a JSON
payload, commit; then a read of 50 rows with their JSON columns (a list
page). Drivers are measured alternately, three rounds, on one scratch
database; the figure is events per second and the ratio to PyMySQL.

Run: ``.venv/bin/python bench/mariadb_drivers.py`` (needs the drivers
installed; each one missing is reported and skipped).
"""

from __future__ import annotations

import importlib
import json
import os
import time
import uuid

URL_HOST = os.environ.get("CORRAL_BENCH_MARIADB_HOST", "127.0.0.1")
ITERATIONS = 2000

DRIVERS = {
    "PyMySQL": ("pymysql", lambda m, db: m.connect(host=URL_HOST, user="root", database=db,
                                                   autocommit=False)),
    "mysqlclient": ("MySQLdb", lambda m, db: m.connect(host=URL_HOST, user="root",
                                                       database=db)),
    "mariadb": ("mariadb", lambda m, db: m.connect(host=URL_HOST, user="root", database=db)),
}


def setup(admin, db: str) -> None:
    cur = admin.cursor()
    cur.execute(f"CREATE DATABASE `{db}`")
    cur.execute(f"USE `{db}`")
    cur.execute("CREATE TABLE machines (id BIGINT PRIMARY KEY AUTO_INCREMENT, "
                "kind VARCHAR(32), name VARCHAR(200), state VARCHAR(64), counters JSON, "
                "epoch BIGINT, updated_at DATETIME(6), UNIQUE KEY (kind, name))")
    cur.execute("CREATE TABLE history (id BIGINT PRIMARY KEY AUTO_INCREMENT, "
                "machine_id BIGINT, event VARCHAR(64), at DATETIME(6), payload JSON)")
    cur.executemany("INSERT INTO machines (kind, name, state, counters, epoch, updated_at) "
                    "VALUES ('board', %s, 'ready', '{}', 1, NOW(6))",
                    [(f"b{i}",) for i in range(200)])
    admin.commit()


def run(conn, iterations: int) -> float:
    cur = conn.cursor()
    started = time.perf_counter()
    for i in range(iterations):
        name = f"b{i % 200}"
        cur.execute("SELECT id, state, counters, epoch FROM machines "
                    "WHERE kind = %s AND name = %s FOR UPDATE", ("board", name))
        machine_id, _, counters, epoch = cur.fetchone()
        json.loads(counters)
        cur.execute("UPDATE machines SET epoch = %s, updated_at = NOW(6) WHERE id = %s",
                    (epoch + 1, machine_id))
        cur.execute("INSERT INTO history (machine_id, event, at, payload) "
                    "VALUES (%s, %s, NOW(6), %s)",
                    (machine_id, "reboot", json.dumps({"lag_seconds": 0.1, "n": i})))
        conn.commit()
        if i % 20 == 0:
            cur.execute("SELECT id, name, state, counters FROM machines ORDER BY name LIMIT 50")
            for row in cur.fetchall():
                json.loads(row[3])
            conn.commit()
    return iterations / (time.perf_counter() - started)


def main() -> None:
    import pymysql

    db = f"corral_bench_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host=URL_HOST, user="root", autocommit=False)
    setup(admin, db)
    available = {}
    for label, (module, connect) in DRIVERS.items():
        try:
            available[label] = (importlib.import_module(module), connect)
        except ImportError as exc:
            print(f"{label}: not installed ({exc})")
    rates: dict[str, list[float]] = {label: [] for label in available}
    try:
        for _ in range(3):
            for label, (module, connect) in available.items():
                conn = connect(module, db)
                rates[label].append(run(conn, ITERATIONS))
                conn.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE `{db}`")
        admin.close()
    base = max(rates["PyMySQL"])
    for label, seen in rates.items():
        best = max(seen)
        print(f"{label:12s} {best:8.0f} events/s (best of 3: "
              f"{', '.join(f'{r:.0f}' for r in seen)})  {best / base:.2f}x PyMySQL")


if __name__ == "__main__":
    main()
