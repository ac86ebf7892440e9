"""Jobs end to end on SQLite and PostgreSQL: submit, schedule onto pools, run
actions against the real MO simulator over gRPC, finish and release."""

from __future__ import annotations

import json
import socket

import pytest
from sqlalchemy import select

from corral.engine.worker import OperationWorker
from corral.errors import Conflict, EventNotAllowed
from corral.jobs.service import JobOperations, JobService
from corral.jobs.spec import SpecError
from corral.mo.client import MoClient
from corral.mo.simulator import MoSimulator, serve_simulator
from corral.pools import PoolService
from corral.pools.operations import MoOperations
from corral.store.schema import jobs
from tests.integration.test_pools import SimClock, everything

OS = "azurelinux3-test-x86_64-r11"


def spec(*actions: str, job: str = "{hours: 2}", action: str = "{minutes: 30}",
         priority: str = "medium", name: str = "test job", fabric: str = "") -> str:
    body = "\n".join(f"      - {a}" for a in actions)
    return (f"apiVersion: corral/v1\nkind: Job\njob_name: {name}\npriority: {priority}\n"
            f"{fabric}timeouts: {{job: {job}, action: {action}}}\n"
            f"stages:\n  - name: main\n    actions:\n{body}\n")


OVERRIDE = f"{{name: os, osOverrideAction: {{osVersion: {OS}}}}}"


@pytest.fixture
def lab(engine, clock):
    """Pools, a real MO simulator, a worker with every handler, and ``step``:
    move both clocks, sweep, schedule, run operations."""
    servers = []

    def start(*, pools: int = 2, mo: bool = True, batch: int = 2, tick: float = 30.0):
        sim_clock = SimClock()
        simulator = MoSimulator(nodes_per_pool=3, batch=batch, tick=tick, clock=sim_clock)
        if mo:
            server, port = serve_simulator(simulator, "127.0.0.1:0")
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = None
        client = MoClient(f"127.0.0.1:{port}", deadline=1, attempts=2, backoff=0.001)
        servers.append((server, client))
        service = JobService(engine)
        PoolService(engine).create_fleet("f1", pools, actor="test")
        handlers = MoOperations(client).handlers() | JobOperations(service, client).handlers()
        worker = OperationWorker(engine, handlers, owner="test", max_attempts=2,
                                 retry_delay=0.0)

        def step(seconds: float = 0.0, rounds: int = 3) -> None:
            clock.advance(seconds)
            sim_clock.now += seconds
            for _ in range(rounds):
                engine.sweeper.sweep_timeouts()
                service.dispatch_pass()
                worker.run_pending()

        step.handlers = handlers  # type: ignore[attr-defined]
        return service, step, simulator

    yield start
    for server, client in servers:
        client.close()
        if server is not None:
            server.stop(grace=None)


def state(engine, job: str) -> str:
    return engine.get("job", job).state


def test_a_malformed_spec_is_refused_and_stores_nothing(engine, lab):
    service, _, _ = lab()
    before = everything(engine)
    with pytest.raises(SpecError) as info:
        service.submit(spec("{name: os, osOverrideAction: {osVersion: 1.10}}"), actor="t")
    assert info.value.problems == [
        "stages[0].actions[0].osOverrideAction.osVersion: must be a string, not the number "
        "1.1 (quote it to keep it a string)"]
    assert everything(engine) == before


def test_an_override_job_runs_end_to_end_and_releases_its_pool(engine, lab):
    service, step, simulator = lab()
    created = service.submit(spec(OVERRIDE), actor="ci")
    job = created.name
    assert state(engine, job) == "queued"
    step()
    doc = service.describe(job)
    pool = doc["pool"]
    assert doc["state"] == "waiting"
    assert doc["current"] == {"stage": "main", "action": "os", "type": "osOverrideAction",
                              "attempt": 1}
    assert engine.get("pool", pool).state == "rolling_out"
    assert simulator.overrides(pool)[0].version == OS
    step(60)
    assert state(engine, job) == "complete"
    assert engine.get("pool", pool).state == "idle"
    assert PoolService(engine).assignments() == []
    assert service.describe(job)["failure_comment"] is None
    events = [e.event for e in reversed(engine.history("job", job, limit=100))]
    assert events == ["create", "queue", "assign", "validate_dispatch_ok", "start_action_ok",
                      "action_done", "start_action_complete", "finish_job_ok"]


def test_an_action_that_times_out_ends_the_job_incomplete_and_releases(engine, lab):
    service, step, _ = lab()
    job = service.submit(spec("{name: wait, waitForEventAction: {event: go}}",
                              action="{minutes: 10}"), actor="ci").name
    step()
    assert state(engine, job) == "waiting"
    step(599)
    assert state(engine, job) == "waiting"
    step(2)
    assert state(engine, job) == "incomplete"
    assert service.describe(job)["failure_comment"] == (
        "stages[0].actions[0] (wait) timed out after 10m")
    assert PoolService(engine).assignments() == []


def test_failure_retry_tries_again_and_a_signal_completes(engine, lab):
    service, step, _ = lab()
    job = service.submit(spec("{name: wait, waitForEventAction: {event: tests.done}, "
                              "failure_retry: 1}", action="{minutes: 10}"), actor="ci").name
    step()
    step(601)
    doc = service.describe(job)
    assert (doc["state"], doc["current"]["attempt"]) == ("waiting", 2)
    with pytest.raises(Conflict, match=r"waits for event 'tests\.done'"):
        service.signal(job, "other", actor="ci")
    with pytest.raises(Conflict, match="cannot be fired directly"):
        engine.fire("job", job, "action_done", source="operator")
    service.signal(job, "tests.done", actor="ci")
    step()
    assert state(engine, job) == "complete"


def test_a_hold_keeps_the_pool_for_its_duration(engine, lab):
    service, step, _ = lab()
    job = service.submit(spec("{name: hold, holdAction: {duration: {minutes: 30}}}",
                              action="{hours: 1}"), actor="ci").name
    step()
    pool = service.describe(job)["pool"]
    step(1799)
    assert state(engine, job) == "waiting"
    assert [a.job_run_id for a in PoolService(engine).assignments()] == [job]
    step(2)
    assert state(engine, job) == "complete"
    assert engine.get("pool", pool).state == "idle"


def test_the_job_timeout_ends_a_job_whatever_its_actions(engine, lab):
    service, step, _ = lab()
    job = service.submit(spec("{name: a, holdAction: {duration: {minutes: 50}}}",
                              "{name: b, holdAction: {duration: {minutes: 50}}}",
                              job="{hours: 1}", action="{hours: 1}"), actor="ci").name
    step()
    step(3000)
    assert service.describe(job)["current"]["action"] == "b"
    step(700)
    assert state(engine, job) == "incomplete"
    assert service.describe(job)["failure_comment"] == (
        "job timeout: 1h passed during stages[0].actions[1] (b)")


def test_dispatch_validation_failure_ends_the_job_incomplete(engine, lab):
    service, step, _ = lab(mo=False)
    job = service.submit(spec(OVERRIDE), actor="ci").name
    step()
    assert state(engine, job) == "incomplete"
    comment = service.describe(job)["failure_comment"]
    assert comment.startswith("dispatch validation failed: stages[0].actions[0] (os): MO at ")
    assert "UNAVAILABLE" in comment
    assert PoolService(engine).assignments() == []


@pytest.mark.parametrize("where", ["submitted", "queued", "assigned", "running", "waiting"])
def test_cancel_works_from_every_non_final_state(engine, lab, where):
    service, step, _ = lab(pools=1)
    job = service.submit(spec("{name: wait, waitForEventAction: {event: go}}"),
                         actor="ci").name
    if where == "submitted":
        engine.force_state("job", job, where, actor="test", reason="set-up")
    elif where != "queued":
        service.dispatch_pass()
        if where != "assigned":
            engine.force_state("job", job, where, actor="test", reason="set-up")
    assert state(engine, job) == where
    service.cancel(job, actor="ann", reason="not needed")
    step()
    assert state(engine, job) == "canceled"
    assert service.describe(job)["failure_comment"] == "not needed"
    assert PoolService(engine).assignments() == []
    with pytest.raises(EventNotAllowed):
        service.cancel(job, actor="ann")


def test_the_queue_serves_the_highest_priority_then_the_oldest(engine, lab):
    service, step, _ = lab(pools=1)
    hold = "{name: hold, holdAction: {duration: {minutes: 5}}}"
    order = [service.submit(spec(hold, priority=p, name=f"job {p}"), actor="ci").name
             for p in ("low", "medium", "high", "medium", "90")]
    started = []
    for _ in range(len(order)):
        step(301)
        started += [a.job_run_id for a in PoolService(engine).assignments()]
    assert started == [order[2], order[4], order[1], order[3], order[0]]
    step(301)
    assert all(state(engine, j) == "complete" for j in order)


def test_maize_snapshot_submits_an_override_job(engine, lab):
    service, step, _ = lab()
    job = service.submit_maize(json.dumps({"snapshot": {"release": OS}}), actor="maize").name
    record = service.record(job)
    assert record["api_version"] == "corral/v1"
    assert record["job_name"] == f"maize {OS}"
    step()
    step(60)
    assert state(engine, job) == "complete"
    with engine.store.sa.begin() as conn:
        stored = conn.execute(select(jobs.c.spec_text).where(jobs.c.name == job)).scalar()
    assert f"osVersion: {OS}" in stored


def test_a_retried_override_waits_for_the_rollout_already_under_way(engine, lab):
    service, step, simulator = lab(batch=1, tick=50.0)
    job = service.submit(spec(f"{{name: os, osOverrideAction: {{osVersion: {OS}}}, "
                              "failure_retry: 1, timeout: {seconds: 90}}"), actor="ci").name
    step()
    pool = service.describe(job)["pool"]
    step(61)
    assert engine.get("pool", pool).state == "rolling_out"
    step(30)
    doc = service.describe(job)
    assert (doc["state"], doc["current"]["attempt"]) == ("waiting", 2)
    step(30)
    assert state(engine, job) == "complete"
    assert len(simulator.overrides(pool)) == 1


def test_news_from_a_pool_before_its_job_waits_is_retried(engine, lab):
    from corral.jobs.service import JobNotWaitingYet
    from corral.operations.base import OperationContext

    service, step, _ = lab()
    job = service.submit(spec(OVERRIDE), actor="ci").name
    service.dispatch_pass()
    pool = service.describe(job)["pool"]
    engine.force_state("job", job, "running", actor="test", reason="set-up")
    ctx = OperationContext(operation_id=0, kind="notify_job", machine_kind="pool", name=pool,
                           attrs={}, payload={"state": "overridden"}, attempt=1,
                           vars={"job_run_id": job})
    with pytest.raises(JobNotWaitingYet):
        step.handlers["notify_job"](ctx)


def test_a_context_nested_as_deep_as_allowed_is_stored_and_read_back(engine, lab):
    """The deepest context the payload check lets through (32 levels) is
    stored with the spec and read back on every backend (MariaDB's own JSON
    type refuses 32 levels: Corral keeps JSON there as text)."""
    service, _, _ = lab()
    context: object = 1
    for _ in range(31):
        context = {"a": context}
    text = spec(OVERRIDE) + "context: " + json.dumps(context) + "\n"
    job = service.submit(text, actor="t").name
    assert service.spec(job).context == context
    assert service.record(job)["spec_text"] == text
