"""What the history counter costs MariaDB writers, alone.

    python -m bench.history_counter [--connections 8] [--seconds 10]

Each connection commits transactions of one ``UPDATE`` and one
history-shaped ``INSERT`` as fast as it can: the ``UPDATE`` on a row of its
own (no shared lock: ids from ``AUTO_INCREMENT``), or on the one counter row
that MariaDB and MySQL take history ids from in commit order
(``store/mysql.py``), holding its lock to the commit. Prints transactions/s
of each, alternately, and InnoDB's row lock waits. Needs a MariaDB server
(``CORRAL_BENCH_MARIADB_URL``, default ``mysql://root@127.0.0.1:3306/``).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from typing import Any

from bench.mariadb_engine import _admin


def _status(cursor: Any) -> dict[str, int]:
    cursor.execute("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock_%'")
    return {k: int(v) for k, v in cursor.fetchall()}


def _run(database: str, connections: int, seconds: float, shared: bool) -> dict[str, float]:
    stop, counts = threading.Event(), [0] * connections

    def work(w: int) -> None:
        conn = _admin()
        conn.autocommit(False)
        cur = conn.cursor()
        cur.execute(f"USE `{database}`")
        while not stop.is_set():
            if shared:
                cur.execute("UPDATE counter SET last_id = LAST_INSERT_ID(last_id + 1) "
                            "WHERE id = 0")
                cur.execute("INSERT INTO hist (id, machine_id, reason, at, payload) "
                            "VALUES (%s, %s, 'event', NOW(6), '{}')", (cur.lastrowid, w))
            else:
                cur.execute("UPDATE counter SET last_id = last_id + 1 WHERE id = %s", (w + 1,))
                cur.execute("INSERT INTO hist (machine_id, reason, at, payload) "
                            "VALUES (%s, 'event', NOW(6), '{}')", (w,))
            conn.commit()
            counts[w] += 1
        conn.close()

    admin = _admin()
    cursor = admin.cursor()
    cursor.execute(f"USE `{database}`")
    cursor.execute("UPDATE counter SET last_id = (SELECT COALESCE(MAX(id), 0) FROM hist) "
                   "WHERE id = 0")
    before = _status(cursor)
    threads = [threading.Thread(target=work, args=(w,)) for w in range(connections)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    after = _status(cursor)
    admin.close()
    return {"tps": sum(counts) / seconds,
            "waits": after["Innodb_row_lock_waits"] - before["Innodb_row_lock_waits"],
            "waited_ms": after["Innodb_row_lock_time"] - before["Innodb_row_lock_time"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    database = f"corral_bench_counter_{uuid.uuid4().hex[:8]}"
    admin = _admin()
    cursor = admin.cursor()
    cursor.execute(f"CREATE DATABASE `{database}`")
    try:
        cursor.execute(f"USE `{database}`")
        cursor.execute("CREATE TABLE hist (id BIGINT PRIMARY KEY AUTO_INCREMENT, "
                       "machine_id BIGINT, reason TEXT, at DATETIME(6), payload LONGTEXT)")
        cursor.execute("CREATE TABLE counter (id INT PRIMARY KEY, last_id BIGINT)")
        cursor.executemany("INSERT INTO counter VALUES (%s, 0)",
                           [(i,) for i in range(args.connections + 1)])
        for _ in range(args.repeat):
            for shared in (False, True):
                r = _run(database, args.connections, args.seconds, shared)
                label = "one counter row" if shared else "a row each     "
                print(f"{args.connections} connections, {label}: {r['tps']:7.0f} tx/s "
                      f"(row lock waits {r['waits']}, {r['waited_ms']} ms waited)",
                      flush=True)
    finally:
        cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()


if __name__ == "__main__":
    main()
