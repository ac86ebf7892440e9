"""Jobs that lease boards (corral/v2 ``leaseAction``) through real HTTP on
SQLite, PostgreSQL and MariaDB, in the simulated lab: the job waits for its
lease, runs with the boards held, and gives them back however it ends
(complete, failed, canceled, its lease lost); a v2-only spec is refused as v1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.app import build_handlers, build_worker
from corral.config import Settings
from corral.health.definitions import Definitions
from corral.health.service import HealthPass
from corral.health.service import install as install_health
from corral.jobs.leasing import JobLeases
from corral.jobs.service import JobService
from corral.leases import LeaseService, install
from corral.leases.scheduler import LeaseScheduler
from corral.pools import PoolService
from corral.tokens import TokenStore
from tests.serving import serving

BOARDS = {
    "arm-1": {"arch": "arm64", "labels": {"rack": "r1"}},
    "arm-2": {"arch": "arm64", "labels": {"rack": "r2"}},
    "arm-3": {"arch": "arm64", "labels": {"rack": "r3", "broken": True}},
    "x86-1": {"arch": "amd64", "labels": {"rack": "r1"}},
}


def spec(*actions: str, action: str = "{minutes: 30}", job: str = "{hours: 2}") -> str:
    body = "\n".join(f"      - {a}" for a in actions)
    return (f"apiVersion: corral/v2\nkind: Job\njob_name: lease job\n"
            f"timeouts: {{job: {job}, action: {action}}}\n"
            f"stages:\n  - name: boards\n    actions:\n{body}\n")


# Power cycled on return: the simulated lab has no second stage to reimage them.
ARM = "{name: take, leaseAction: {selector: 'arch=arm64,!broken', count: 2, " \
      "duration: {hours: 1}, heartbeat: {minutes: 1}, on_return: power_cycle}}"
TESTS = "{name: tests, waitForEventAction: {event: tests.done}}"


class Lab:
    """A served engine with boards, a pool, tokens and a hand-driven clock."""

    def __init__(self, engine: Any, clock: Any, http: httpx.Client, tokens: dict[str, str],
                 passes: list[Any]) -> None:
        self.engine, self.clock, self.http, self.tokens = engine, clock, http, tokens
        self.passes = passes

    def call(self, method: str, path: str, who: str = "ops", **kw: Any) -> httpx.Response:
        token = self.tokens.get(who, who)
        return self.http.request(method, path, headers={"Authorization": f"Bearer {token}"},
                                 **kw)

    def submit(self, text: str) -> str:
        answer = self.call("POST", "/api/v1/jobs", json={"spec": text})
        assert answer.status_code in (200, 201), answer.text
        return str(answer.json()["name"])

    def job(self, name: str) -> dict[str, Any]:
        answer = self.call("GET", f"/api/v1/jobs/{name}", "viewer")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def lease(self, name: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/v1/leases/{name}", "admin").json())

    def state(self, board: str) -> str:
        return str(self.engine.get("board", board).state)

    def settle(self, rounds: int = 6, step: float = 15.0) -> None:
        """Let time pass: every pass of a worker process, then the clock moves."""
        for _ in range(rounds):
            for run in self.passes:
                run()
            self.clock.advance(step)
            self.engine.sweeper.sweep_timeouts()
        for run in self.passes:
            run()

    def history(self, job: str) -> list[Any]:
        return list(reversed(self.engine.history("job", job, limit=100)))


@pytest.fixture
def lab(engine: Any, clock: Any) -> Iterator[Lab]:
    install(engine)
    install_health(engine)
    settings = Settings(sim_operation_seconds=0, lease_quota_boards=3, lease_reserve_after=100000,
                        lease_max_duration=7200, timeout_scale=0.01)
    health = HealthPass(engine, settings, Definitions(()))
    scheduler = LeaseScheduler(engine, settings)
    leases = LeaseService(engine, settings, kick=scheduler.run_pass)
    engine.import_machines("board", BOARDS, actor="test", reason="lab")
    for name in BOARDS:
        engine.force_state("board", name, "ready", actor="test", reason="lab")
    PoolService(engine).create_fleet("f1", 2, actor="test")
    store = TokenStore(engine.store, cache_seconds=0)
    tokens = {name: store.issue(name, role) for name, role in
              [("ops", "operator"), ("viewer", "viewer"), ("alice", "user"),
               ("admin", "admin")]}
    worker = build_worker(engine, settings, build_handlers(settings, simulate=True,
                                                           engine=engine))
    jobs = JobService(engine)
    watcher = JobLeases(engine, leases)
    app = create_app(engine, store, CollectorRegistry(), leases=leases)
    passes = [worker.run_pending, scheduler.run_pass, health.run_pass, jobs.dispatch_pass,
              watcher.watch_pass, worker.run_pending, health.run_pass]
    with serving(app) as (address, _), httpx.Client(
            base_url=f"http://{address[0]}:{address[1]}", timeout=30) as http:
        yield Lab(engine, clock, http, tokens, passes)
    worker.shutdown()


def _holding(lab: Lab, job: str) -> dict[str, Any]:
    """Settle until the job waits for its tests with its lease active; the lease."""
    lab.settle()
    doc = lab.job(job)
    assert doc["state"] == "waiting", doc
    assert doc["current"]["action"] == "tests", doc
    [lease] = doc["leases"]
    assert (lease["state"], lease["held"]) == ("active", True), lease
    return lease


def _given_back(lab: Lab, lease: dict[str, Any], ended: str = "closed") -> None:
    lab.settle(8)
    shown = lab.lease(lease["id"])
    assert shown["state"] == ended, shown
    for board in lease["boards"]:
        assert lab.state(board) == "ready"
        holder = lab.call("GET", f"/api/v1/boards/{board}/holder", "viewer")
        assert holder.json() is None, holder.text


def test_a_job_leases_boards_runs_with_them_and_gives_them_back(lab: Lab) -> None:
    job = lab.submit(spec(ARM, TESTS, action="{hours: 1}"))
    lease = _holding(lab, job)
    assert sorted(lease["boards"]) == ["arm-1", "arm-2"]
    assert {lab.state(b) for b in lease["boards"]} == {"leased"}
    shown = lab.lease(lease["id"])
    assert shown["owner"] == "ops"  # the submitter's quota and fair share
    assert shown["purpose"].startswith(f"job {job} (lease job): boards / take")
    holders = lab.call("GET", "/api/v1/boards/arm-1/holders", "viewer").json()
    assert holders[0]["lease"] == lease["id"]
    # The history and explain say which lease the job holds.
    done = next(h for h in lab.history(job) if h.event == "action_done")
    assert done.reason.startswith(f"{lease['id']} active: boards arm-1, arm-2 until ")
    explained = lab.call("GET", f"/api/v1/jobs/{job}/explain", "viewer").json()
    assert f"It holds {lease['id']} (boards arm-1, arm-2) until" in explained["summary"]
    # The job heartbeats the lease: 40 minutes later it is still active.
    lab.settle(rounds=160, step=15)
    assert lab.lease(lease["id"])["state"] == "active"
    signalled = lab.call("POST", f"/api/v1/jobs/{job}/signal", json={"event": "tests.done"})
    assert signalled.status_code == 200, signalled.text
    lab.settle(2)
    assert lab.job(job)["state"] == "complete"
    _given_back(lab, lease)
    finish = next(h for h in lab.history(job) if h.event == "finish_job_ok")
    assert finish is not None


def test_a_canceled_job_gives_its_boards_back(lab: Lab) -> None:
    job = lab.submit(spec(ARM, TESTS))
    lease = _holding(lab, job)
    canceled = lab.call("POST", f"/api/v1/jobs/{job}/cancel", json={"reason": "not needed"})
    assert canceled.status_code == 200, canceled.text
    lab.settle(2)
    doc = lab.job(job)
    assert (doc["state"], doc["failure_comment"]) == ("canceled", "not needed")
    _given_back(lab, lease)


def test_a_failed_job_gives_its_boards_back(lab: Lab) -> None:
    job = lab.submit(spec(ARM, TESTS, action="{minutes: 10}"))
    lease = _holding(lab, job)
    lab.settle(rounds=45, step=15)
    doc = lab.job(job)
    assert doc["state"] == "incomplete"
    assert doc["failure_comment"] == "stages[0].actions[1] (tests) timed out after 10m"
    _given_back(lab, lease)


def test_a_lease_that_runs_out_ends_the_job(lab: Lab) -> None:
    short = "{name: take, leaseAction: {selector: arch=amd64, duration: {minutes: 5}, " \
            "on_return: power_cycle}}"
    job = lab.submit(spec(short, TESTS))
    lease = _holding(lab, job)
    lab.settle(rounds=25, step=15)
    doc = lab.job(job)
    assert doc["state"] == "incomplete"
    assert doc["failure_comment"] == f"{lease['id']} ended (expired) while the job held it"
    _given_back(lab, lease, ended="expired")


def test_a_lease_that_never_comes_fails_its_action_and_is_cancelled(lab: Lab) -> None:
    taken = lab.call("POST", "/api/v1/leases", "alice",
                     json={"selector": "arch=amd64", "duration": 7200,
                           "on_return": "power_cycle"})
    assert taken.status_code == 201, taken.text
    wanted = "{name: take, leaseAction: {selector: arch=amd64, duration: {hours: 1}}, " \
             "failure_retry: 1}"
    job = lab.submit(spec(wanted, TESTS, action="{minutes: 10}"))
    lab.settle(rounds=3)
    doc = lab.job(job)
    [first] = doc["leases"]
    assert (doc["state"], first["state"], first["held"]) == ("waiting", "queued", False)
    explained = lab.call("GET", f"/api/v1/jobs/{job}/explain", "viewer").json()
    assert f"It waits for {first['id']} (queued;" in explained["summary"]
    lab.settle(rounds=42, step=15)  # past the action's 10 min: the retry's lease
    doc = lab.job(job)
    assert (doc["state"], doc["current"]["attempt"]) == ("waiting", 2)
    assert lab.lease(first["id"])["state"] == "cancelled"
    [second] = doc["leases"]
    assert second["id"] != first["id"]
    lab.settle(rounds=42, step=15)
    doc = lab.job(job)
    assert doc["state"] == "incomplete"
    assert doc["failure_comment"] == (
        "stages[0].actions[0] (take) timed out after 10m (after 1 retry)")
    assert lab.lease(second["id"])["state"] == "cancelled"
    assert lab.lease(taken.json()["id"])["state"] == "active"


def test_a_lease_the_lab_cannot_serve_fails_at_dispatch(lab: Lab) -> None:
    job = lab.submit(spec("{name: take, leaseAction: {selector: arch=arm64, count: 5, "
                          "duration: {hours: 1}}}"))
    lab.settle(2)
    doc = lab.job(job)
    assert doc["state"] == "incomplete"
    assert doc["failure_comment"] == (
        "dispatch validation failed: stages[0].actions[0] (take): only 3 board(s) in the lab "
        "match arch=arm64; the lease asks for 5")
    assert doc["leases"] == []
    assert lab.call("GET", "/api/v1/leases", "admin").json() == []


def test_a_v2_only_spec_is_refused_as_v1_and_read_as_v2(lab: Lab) -> None:
    job = lab.submit(spec(ARM, TESTS))
    refused = lab.call("GET", f"/api/v1/jobs/{job}/spec", "viewer",
                       params={"api_version": "corral/v1"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["message"] == (
        "cannot convert to corral/v1 without losing information: stages[0].actions[0]: "
        "action type leaseAction needs corral/v2; corral/v1 cannot express it")
    as_v2 = lab.call("GET", f"/api/v1/jobs/{job}/spec", "viewer",
                     params={"api_version": "corral/v2"})
    assert as_v2.status_code == 200
    assert as_v2.json()["text"] == spec(ARM, TESTS)


def test_a_v1_job_still_runs_beside_v2(lab: Lab) -> None:
    text = ("apiVersion: corral/v1\nkind: Job\njob_name: old\n"
            "timeouts: {job: {hours: 1}, action: {minutes: 30}}\n"
            "stages: [{name: s, actions: [{name: h, holdAction: {duration: {minutes: 1}}}]}]\n")
    job = lab.submit(text)
    lab.settle(8)
    doc = lab.job(job)
    assert (doc["state"], doc["api_version"], doc["leases"]) == ("complete", "corral/v1", [])
    as_v2 = lab.call("GET", f"/api/v1/jobs/{job}/spec", "viewer",
                     params={"api_version": "corral/v2"}).json()
    assert as_v2["text"].startswith("apiVersion: corral/v2\n")
