"""Pools under contention and crashes, on real processes.

20 jobs in 4 processes race for 10 pools on PostgreSQL: no pool ever has two
holders, checked three ways (each job's own view while it holds a pool,
snapshots of pool_assignments against the pool states, and every pool's
history). A worker killed in the middle of an MO call leaves a pool that the
next worker (or an operator) recovers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import select

from corral.engine.core import Engine
from corral.engine.worker import OperationWorker
from corral.machines import MachineSet
from corral.mo.client import MoClient
from corral.mo.simulator import MoSimulator, serve_simulator
from corral.pools import PoolService
from corral.pools.operations import MoOperations
from corral.store import open_store
from corral.store.schema import machines as machines_table
from corral.store.schema import operations, pool_assignments
from tests.integration.test_crash import CORRAL, ROOT, wait_for
from tests.processes import stop

pytestmark = pytest.mark.slow
OS = "azurelinux3-test-x86_64-r11"


def test_twenty_jobs_racing_for_ten_pools_never_share_one(server_engine, server_migrated_url,
                                                         tmp_path):
    pools = PoolService(server_engine)
    pools.create_fleet("race", 10, actor="test")
    start = tmp_path / "start"
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.integration.pool_racer",
                          server_migrated_url, "--jobs",
                          ",".join(f"job-{p}-{j}" for j in range(5)), "--rounds", "6",
                          "--start-at", str(start)],
                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for p in range(4)
    ]
    inconsistent: list[str] = []
    samples = 0
    stop = threading.Event()

    def watch() -> None:
        # One statement, one snapshot: an assignment row and its pool's state
        # change in the same transaction, so they must always agree.
        nonlocal samples
        query = (select(pool_assignments.c.cb_pool_name, pool_assignments.c.job_run_id,
                        machines_table.c.state, machines_table.c.vars)
                 .join(machines_table, machines_table.c.name == pool_assignments.c.cb_pool_name))
        while not stop.is_set():
            with server_engine.store.sa.begin() as conn:
                for pool, job, state, variables in conn.execute(query):
                    if state != "assigned" or variables.get("job_run_id") != job:
                        inconsistent.append(f"{pool}: held by {job} but {state} {variables}")
            samples += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    start.touch()
    reports = {}
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0
            reports.update(json.loads(out))
    finally:
        stop.set()
        watcher.join()

    assert len(reports) == 20
    assert [v for r in reports.values() for v in r["violations"]] == []
    assert sum(r["taken"] for r in reports.values()) == 20 * 6
    assert sum(r["conflicts"] for r in reports.values()) > 0, "the jobs never collided"
    assert samples > 0
    assert inconsistent == []
    assert pools.assignments() == []

    # Every pool's history alternates assign(job) / release(same job).
    assigns = 0
    for row in server_engine.list_machines("pool"):
        holder = None
        for entry in reversed(server_engine.history("pool", row.name, limit=1000)):
            if entry.event == "assign":
                assert holder is None, f"{row.name}: {entry.payload} while {holder} held it"
                holder = entry.payload["job_run_id"]
                assigns += 1
            elif entry.event == "release":
                assert entry.payload["job_run_id"] == holder
                holder = None
        assert holder is None
        assert row.state == "idle"
    assert assigns == 20 * 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_worker_killed_mid_override_leaves_a_recoverable_pool(db_url, migrated_url,
                                                                machines: MachineSet):
    engine = Engine(open_store(migrated_url), machines)
    pools = PoolService(engine)
    pools.create_fleet("f1", 2, actor="test")
    p1, p2 = "testbed-cert-pool-1-f1", "testbed-cert-pool-2-f1"
    pools.override(p1, job_run_id="job-a", os_version=OS, ttl_seconds=3600, actor="test")
    pools.override(p2, job_run_id="job-b", os_version=OS, ttl_seconds=3600, actor="test")

    # The worker's MO does not answer (nothing listens on the port), so it is
    # inside the MO call, retrying, when it dies.
    mo_port = _free_port()
    env = os.environ | {"CORRAL_DATABASE_URL": migrated_url, "CORRAL_LOG_LEVEL": "warning",
                        "CORRAL_MO_TARGET": f"127.0.0.1:{mo_port}", "CORRAL_MO_ATTEMPTS": "100",
                        "CORRAL_MO_DEADLINE": "1", "CORRAL_OPERATION_LEASE": "3",
                        "CORRAL_OPERATION_INTERVAL": "0.1"}
    victim = subprocess.Popen([CORRAL, "serve", "--role", "worker"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def leased() -> bool:
        with engine.store.sa.begin() as conn:
            return list(conn.execute(select(operations.c.status)
                                     .where(operations.c.kind == "set_os_override"))
                        ) == [("running",), ("running",)]

    wait_for(leased, what="the worker to take both set_os_override operations")
    time.sleep(0.3)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert engine.get("pool", p1).state == "overriding"

    # An operator can always take a pool back by hand...
    engine.force_state("pool", p2, "assigned", actor="op", reason="MO worker died",
                       if_state="overriding")
    assert engine.get("pool", p2).state == "assigned"

    # ...and a new worker, once the dead one's lease has run out, finishes the
    # override it was in the middle of.
    simulator = MoSimulator(nodes_per_pool=2, batch=2, tick=0.01)
    server, _ = serve_simulator(simulator, f"127.0.0.1:{mo_port}")
    client = MoClient(f"127.0.0.1:{mo_port}", deadline=2)
    try:
        worker = OperationWorker(engine, MoOperations(client).handlers(), owner="rescuer")

        def recovered() -> bool:
            worker.run_pending()
            return engine.get("pool", p1).state == "overridden"

        wait_for(recovered, timeout=30, what="the override to finish")
    finally:
        client.close()
        server.stop(grace=None)
    assert [o.target for o in simulator.overrides(p1)] == [p1]
    # p2's operation belonged to a state entry the operator ended: it is
    # recorded as stale, never reaches MO and changes nothing.
    assert simulator.overrides(p2) == []
    assert engine.get("pool", p2).state == "assigned"
    with engine.store.sa.begin() as conn:
        statuses = dict(conn.execute(select(operations.c.target, operations.c.status)
                                     .where(operations.c.kind == "set_os_override")).all())
    assert statuses == {p1: "done", p2: "stale"}
    engine.store.dispose()


def test_fifty_jobs_of_mixed_priority_share_ten_pools_in_order(server_engine, server_migrated_url,
                                                               tmp_path):
    import random

    from corral.jobs.service import JobService
    from corral.store.schema import history

    service = JobService(server_engine)
    service.pools.create_fleet("f1", 10, actor="test")
    rng = random.Random(5)
    submitted = {}
    for i in range(50):
        priority = rng.choice(["low", "medium", "high", str(rng.randint(0, 100))])
        text = (f"apiVersion: corral/v1\nkind: Job\njob_name: job {i}\n"
                f"priority: {priority}\nfabric: f1\n"
                "timeouts: {job: {minutes: 10}, action: {minutes: 1}}\n"
                "stages: [{name: s, actions: [{name: hold, holdAction: "
                "{duration: {seconds: 1}}}]}]\n")
        name = service.submit(text, actor="test").name
        submitted[name] = service.record(name)["priority"]
    env = os.environ | {"CORRAL_DATABASE_URL": server_migrated_url, "CORRAL_LOG_LEVEL": "warning",
                        "CORRAL_JOB_DISPATCH_INTERVAL": "0.1", "CORRAL_SWEEP_INTERVAL": "0.1",
                        "CORRAL_OPERATION_INTERVAL": "0.05"}
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    workers = []
    for log in logs:
        with log.open("w") as out:
            workers.append(subprocess.Popen([CORRAL, "serve", "--role", "worker"], cwd=ROOT,
                                            env=env, stdout=out, stderr=out))
    try:
        def all_ended() -> bool:
            # Ended, and every job's finish_job has released its pool.
            states = {r.state for r in server_engine.list_machines("job")}
            return states <= {"complete", "incomplete", "canceled"} and \
                service.pools.assignments() == []

        wait_for(all_ended, timeout=180, what="every job to end")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [stop(worker, timeout=60, log=log, what="worker", signalled=True)
                 for worker, log in zip(workers, logs, strict=True)]
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    assert {r.state for r in server_engine.list_machines("job")} == {"complete"}
    assert service.pools.assignments() == []

    # Every job was queued before the schedulers started, so pools must have
    # gone out strictly by priority, then by submission.
    ids = {r.id: r.name for r in server_engine.list_machines("job")}
    with server_engine.store.sa.begin() as conn:
        assigns = conn.execute(select(history.c.machine_id).where(history.c.event == "assign",
                                                                  history.c.machine_id.in_(ids))
                               .order_by(history.c.id)).scalars().all()
    order = [ids[m] for m in assigns]
    assert len(order) == 50
    assert order == sorted(submitted, key=lambda n: (-submitted[n], int(n.split("-")[1])))

    # No pool ever had two jobs: assign/release alternate in every pool's history.
    for pool in server_engine.list_machines("pool"):
        holder = None
        for entry in reversed(server_engine.history("pool", pool.name, limit=1000)):
            if entry.event == "assign":
                assert holder is None
                holder = entry.payload["job_run_id"]
            elif entry.event == "release":
                assert entry.payload["job_run_id"] == holder
                holder = None
        assert holder is None
