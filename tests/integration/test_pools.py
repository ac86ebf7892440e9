"""Pools on SQLite and PostgreSQL: fleets, assignments, and OS overrides driven
end to end against the real MO simulator over gRPC on loopback."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from corral.engine.worker import OperationWorker
from corral.errors import Conflict, EventNotAllowed, InvalidRequest, UnknownMachine
from corral.mo.client import MoClient
from corral.mo.simulator import Faults, MoSimulator, serve_simulator
from corral.mo.types import HostComponent
from corral.pools import PoolService
from corral.pools.operations import MoOperations
from corral.store.schema import history, machines, operations, pool_assignments

OS = "azurelinux3-test-x86_64-r11"
P1 = "testbed-cert-pool-1-f1"
P2 = "testbed-cert-pool-2-f1"


class SimClock:
    """The MO simulator's clock, moved together with the engine's."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pools(engine):
    service = PoolService(engine, default_ttl=3600)
    service.create_fleet("f1", 3, actor="test")
    return service


def everything(engine) -> tuple:
    with engine.store.sa.begin() as conn:
        return tuple(
            tuple(tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)))
            for t in (machines, history, operations, pool_assignments))


def test_create_fleet_names_pools_per_fabric_and_is_repeatable(engine, pools):
    rows = engine.list_machines("pool")
    assert [r.name for r in rows] == [P1, P2, "testbed-cert-pool-3-f1"]
    assert all(r.state == "idle" for r in rows)
    assert rows[0].attrs == {"fabric": "f1", "rampClass": "CERTIFICATION"}
    assert pools.create_fleet("f1", 4, actor="test")[0].name == "testbed-cert-pool-4-f1"
    with pytest.raises(InvalidRequest):
        pools.create_fleet("F 1", 2, actor="test")


def test_a_job_may_reacquire_its_pool_but_not_take_another_jobs(engine, pools):
    held = pools.acquire("job-a", P1, actor="test")
    assert held.new == (P1,)
    assert pools.acquire("job-a", P1, actor="test").new == ()
    row = engine.get("pool", P1)
    assert row.state == "assigned"
    assert row.vars == {"job_run_id": "job-a"}
    before = everything(engine)
    with pytest.raises(Conflict, match="held by job job-a"):
        pools.acquire("job-b", P1, actor="test")
    with pytest.raises(Conflict, match="held by job job-a"):
        pools.override(P1, job_run_id="job-b", os_version=OS, actor="test")
    with pytest.raises(UnknownMachine):
        pools.acquire("job-b", "no-such-pool", actor="test")
    with pytest.raises(InvalidRequest):
        pools.acquire("job b!", P2, actor="test")
    assert everything(engine) == before


def test_release_all_frees_every_pool_of_the_job(engine, pools):
    pools.acquire("job-a", P1, actor="test")
    pools.acquire("job-a", P2, actor="test")
    pools.acquire("job-b", "testbed-cert-pool-3-f1", actor="test")
    assert sorted(pools.release_all("job-a", actor="test")) == [P1, P2]
    assert [a.pool for a in pools.assignments()] == ["testbed-cert-pool-3-f1"]
    for name in (P1, P2):
        row = engine.get("pool", name)
        assert row.state == "idle"
        assert row.vars == {}
    assert pools.release_all("job-a", actor="test") == []
    assert pools.acquire("job-c", P1, actor="test").new == (P1,)


def test_acquire_any_takes_free_pools_of_a_fabric_all_or_none(engine, pools):
    pools.create_fleet("f2", 1, actor="test")
    pools.acquire("job-a", P1, actor="test")
    held = pools.acquire_any("job-b", count=2, fabric="f1", actor="test")
    assert held.pools == (P2, "testbed-cert-pool-3-f1")
    before = everything(engine)
    with pytest.raises(Conflict, match="only 1 free"):
        pools.acquire_any("job-c", count=2, fabric="f2", actor="test")
    assert everything(engine) == before
    assert pools.acquire_any("job-c", fabric="f2", actor="test").pools == (
        "testbed-cert-pool-1-f2",)


def test_assign_release_and_override_are_fired_only_through_the_service(engine, pools):
    before = everything(engine)
    for event in ("assign", "release", "override"):
        with pytest.raises(Conflict, match="cannot be fired directly"):
            engine.fire("pool", P1, event, source="operator",
                        payload={"job_run_id": "x", "os_version": OS, "ttl_seconds": 1})
    assert everything(engine) == before


def test_an_event_missing_its_declared_vars_is_refused(engine, pools):
    from corral.engine.core import FireRequest

    engine.firing._reserved.clear()  # reach the definition's own check
    pools.acquire("job-a", P1, actor="test")
    before = everything(engine)
    [outcome] = engine.fire_batch([FireRequest(kind="pool", name=P1, event="override",
                                               source="operator",
                                               payload={"os_version": 11})])
    assert isinstance(outcome, InvalidRequest)
    assert "os_version must be of type string" in str(outcome)
    assert "ttl_seconds (integer) is required" in str(outcome)
    assert everything(engine) == before


# ---------------------------------------------------------------- against MO


@pytest.fixture
def lab(engine, clock, pools):
    """A real MO simulator on loopback, a worker running the pool operations,
    and a ``step`` that moves both clocks, sweeps and runs due operations."""
    started = []

    def start(faults: Faults | None = None, *, nodes: int = 4, batch: int = 1):
        sim_clock = SimClock()
        simulator = MoSimulator(nodes_per_pool=nodes, batch=batch, tick=30.0, seed=7,
                                faults=faults, clock=sim_clock)
        server, port = serve_simulator(simulator, "127.0.0.1:0")
        client = MoClient(f"127.0.0.1:{port}", deadline=2, attempts=3, backoff=0.001)
        started.append((server, client))
        worker = OperationWorker(engine, MoOperations(client).handlers(), owner="test",
                                 max_attempts=4, retry_delay=0.0)

        def step(seconds: float = 0.0) -> str:
            clock.advance(seconds)
            sim_clock.now += seconds
            engine.sweeper.sweep_timeouts()
            worker.run_pending()
            return engine.get("pool", P1).state

        return simulator, step

    yield start
    for server, client in started:
        client.close()
        server.stop(grace=None)


def _events(engine, name: str) -> list[tuple[str, str]]:
    return [(e.event, e.to_state) for e in reversed(engine.history("pool", name, limit=1000))]


def test_clean_rollout_reaches_overridden_and_the_ttl_reaches_mo(engine, pools, lab):
    simulator, step = lab()
    result = pools.override(P1, job_run_id="job-a", os_version=OS, ttl_seconds=7200,
                            actor="test")
    assert (result.from_state, result.to_state) == ("assigned", "overriding")
    assert step() == "rolling_out"
    [override] = simulator.overrides(P1)
    assert override.ttl == timedelta(seconds=7200)
    assert (override.target, override.component, override.version) == (
        P1, HostComponent.OS, OS)
    polls = 0
    while step(60) != "overridden":
        polls += 1
        assert polls < 10, _events(engine, P1)
    # 4 nodes, one more every 30 s: converged on the second or third poll.
    assert 1 <= polls <= 3
    assert simulator.applied(P1).converged(OS)
    row = engine.get("pool", P1)
    assert row.vars == {"job_run_id": "job-a", "os_version": OS, "ttl_seconds": 7200}
    assert row.counters == {}
    assert pools.release_all("job-a", actor="test") == [P1]
    assert engine.get("pool", P1).state == "idle"


def test_a_second_override_waits_for_the_first(engine, pools, lab):
    _, step = lab()
    pools.override(P1, job_run_id="job-a", os_version=OS, actor="test")
    before = everything(engine)
    with pytest.raises(EventNotAllowed, match="allowed events: release"):
        pools.override(P1, job_run_id="job-a", os_version="other-os", actor="test")
    assert everything(engine) == before
    while step(60) != "overridden":
        pass
    # Once overridden, the job may roll another version out.
    assert pools.override(P1, job_run_id="job-a", os_version="other-os",
                          actor="test").to_state == "overriding"


def test_bursts_of_unavailable_are_retried_until_the_rollout_converges(engine, pools, lab):
    simulator, step = lab(Faults(unavailable_rate=0.5))
    pools.override(P1, job_run_id="job-a", os_version=OS, actor="test")
    for _ in range(40):
        if step(60) == "overridden":
            break
    assert engine.get("pool", P1).state == "overridden", _events(engine, P1)
    assert simulator.unavailable_answers >= 5


@pytest.mark.parametrize(("faults", "reported"), [
    (Faults(stuck_nodes=1), "base-os"),
    (Faults(wrong_version_nodes=1), f"{OS}-mismatch"),
], ids=["stuck", "wrong-version"])
def test_a_stuck_node_ends_in_failed_override_after_the_configured_polls(
        engine, machines, pools, lab, faults, reported):
    _, step = lab(faults)
    # A TTL longer than all the polls, so that MO never reverts the pool meanwhile.
    pools.override(P1, job_run_id="job-a", os_version=OS, ttl_seconds=86400, actor="test")
    step()
    limit = machines["pool"].definition.states["rolling_out"].counter.max
    timeouts = 0
    while step(60) != "failed_override":
        timeouts += 1
        assert timeouts <= limit
    assert timeouts == limit  # the (max + 1)-th poll timeout fails the pool
    failures = [e for e in engine.history("pool", P1, limit=1000)
                if e.event == "check_rollout_failed"]
    assert failures
    assert f"1 of 4 nodes not on {OS} (they report {reported})" == failures[0].reason
    # The job lets go; the failed pool stays failed, and free of any job,
    # until an operator brings it back.
    assert pools.release_all("job-a", actor="test") == [P1]
    assert engine.get("pool", P1).state == "failed_override"
    assert pools.assignments() == []
    engine.force_state("pool", P1, "idle", actor="op", reason="node replaced")
    assert pools.acquire("job-b", P1, actor="test").new == (P1,)


def test_mo_refusing_the_override_counts_to_failed_override(engine, pools, lab):
    _, step = lab()
    pools.override(P1, job_run_id="job-a", os_version=OS, actor="test")
    # Simulate a pool MO does not know how to override: an empty version
    # cannot reach it through the service, so corrupt the vars directly.
    with engine.store.sa.begin() as conn:
        conn.execute(machines.update().where(machines.c.name == P1)
                     .values(vars={"job_run_id": "job-a", "os_version": OS,
                                   "ttl_seconds": -5}))
    states = [step(120) for _ in range(4)]
    assert states[-1] == "failed_override", _events(engine, P1)
