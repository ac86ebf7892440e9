"""Leases through real HTTP on SQLite, PostgreSQL and MariaDB: the queue's
order, priority, fair share, quotas, selectors, several boards at once,
waits, renewals, heartbeats, revokes, fencing and the return path."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from corral.api.app import create_app
from corral.app import build_handlers, build_worker
from corral.config import Settings
from corral.engine.events import FireRequest
from corral.errors import Conflict
from corral.health.definitions import Definitions
from corral.health.service import HealthPass
from corral.health.service import install as install_health
from corral.leases import LeaseService, install
from corral.leases.scheduler import LeaseScheduler
from corral.names import Role
from corral.tokens import TokenStore
from tests.serving import serving

BOARDS = {
    "arm-1": {"arch": "arm64", "labels": {"rack": "r1"}},
    "arm-2": {"arch": "arm64", "labels": {"rack": "r2"}},
    "arm-3": {"arch": "arm64", "labels": {"rack": "r3", "broken": True}},
    "x86-1": {"arch": "amd64", "labels": {"rack": "r1"}},
}


class Lab:
    """A served engine with boards, tokens and a hand-driven clock."""

    def __init__(self, engine: Any, clock: Any, http: httpx.Client, tokens: dict[str, str],
                 scheduler: LeaseScheduler, worker: Any, health: HealthPass) -> None:
        self.engine, self.clock, self.http = engine, clock, http
        self.tokens, self.scheduler, self.worker = tokens, scheduler, worker
        self.health = health

    def call(self, method: str, path: str, who: str, **kw: Any) -> httpx.Response:
        token = self.tokens.get(who, who)
        return self.http.request(method, path, headers={"Authorization": f"Bearer {token}"},
                                 **kw)

    def ask(self, who: str, **body: Any) -> dict[str, Any]:
        answer = self.call("POST", "/api/v1/leases", who, json=body)
        assert answer.status_code == 201, answer.text
        return answer.json()

    def show(self, lease: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v1/leases/{lease}", "admin").json()

    def state(self, board: str) -> str:
        return self.engine.get("board", board).state

    def settle(self, rounds: int = 12, step: float = 46.0) -> None:
        """Let time pass: operations run, timeouts fire, the scheduler passes."""
        for _ in range(rounds):
            self.worker.run_pending()
            self.scheduler.run_pass()
            self.health.run_pass()
            self.clock.advance(step)
            self.engine.sweeper.sweep_timeouts()
            self.worker.run_pending()
            self.health.run_pass()
            self.scheduler.run_pass()


@pytest.fixture
def lab(engine: Any, clock: Any) -> Iterator[Lab]:
    install(engine)
    install_health(engine)
    settings = Settings(sim_operation_seconds=0, lease_quota_boards=3, lease_quota_queued=5,
                        lease_max_total=600, lease_reserve_after=100000, timeout_scale=0.01)
    scheduler = LeaseScheduler(engine, settings)
    leases = LeaseService(engine, settings, kick=scheduler.run_pass)
    engine.import_machines("board", BOARDS, actor="test", reason="lab")
    for name in BOARDS:
        engine.force_state("board", name, "ready", actor="test", reason="lab")
    store = TokenStore(engine.store, cache_seconds=0)
    tokens = {name: store.issue(name, role) for name, role in
              [("alice", "user"), ("bob", "user"), ("carol", "user"), ("viewer", "viewer"),
               ("operator", "operator"), ("admin", "admin")]}
    worker = build_worker(engine, settings, build_handlers(settings, simulate=True,
                                                           engine=engine))
    app = create_app(engine, store, CollectorRegistry(), leases=leases)
    with serving(app) as (address, _), httpx.Client(
            base_url=f"http://{address[0]}:{address[1]}", timeout=30) as http:
        yield Lab(engine, clock, http, tokens, scheduler, worker,
                  HealthPass(engine, settings, Definitions(())))
    worker.shutdown()


def test_a_lease_is_granted_held_alone_and_given_back(lab: Lab) -> None:
    lease = lab.ask("alice", selector="arch=arm64,!broken", count=2, purpose="smoke",
                    on_return="power_cycle")
    assert lease["state"] == "active"
    assert sorted(lease["boards"]) == ["arm-1", "arm-2"]
    assert lease["token"].startswith("corral_")
    assert lab.state("arm-1") == "leased"
    # Nobody else changes a held board, not even an operator.
    refused = lab.call("POST", "/api/v1/boards/arm-1/events/maintenance", "operator")
    assert refused.status_code == 409
    assert "held by lease" in refused.text
    # The holder reboots it with the lease's token; it comes back held.
    fired = lab.call("POST", f"/api/v1/leases/{lease['id']}/boards/arm-1/events/reboot",
                     lease["token"])
    assert fired.status_code == 200, fired.text
    assert fired.json()["to_state"] == "power_cycling"
    lab.settle(3)
    assert lab.state("arm-1") == "leased"
    # Another owner's token may not touch it, nor the owner's own user token.
    assert lab.call("POST", f"/api/v1/leases/{lease['id']}/release", "bob").status_code == 403
    assert lab.call("POST", f"/api/v1/leases/{lease['id']}/boards/arm-1/events/reboot",
                    "alice").status_code == 403
    holder = lab.call("GET", "/api/v1/boards/arm-1/holder", "viewer").json()
    assert holder["lease"] == lease["id"]
    assert holder["owner"] == "alice"
    # `corral board explain` (its route) names the holder and the expiry.
    explained = lab.call("GET", "/api/v1/boards/arm-1/explain", "viewer").json()
    assert explained["holder"]["lease"] == lease["id"]
    assert f"held by {lease['id']} (alice, active) until" in explained["summary"]
    released = lab.call("POST", f"/api/v1/leases/{lease['id']}/release", "alice")
    assert released.json()["state"] == "returning"
    lab.settle(4)
    assert lab.show(lease["id"])["state"] == "closed"
    assert lab.state("arm-1") == "ready"
    assert lab.state("arm-2") == "ready"
    history = [h.event for h in lab.engine.history("board", "arm-1")]
    assert "lease_return_cycle" in history
    holders = lab.call("GET", "/api/v1/boards/arm-1/holders", "viewer").json()
    assert holders[0]["lease"] == lease["id"]
    assert holders[0]["until"] is not None
    assert lab.call("GET", "/api/v1/boards/arm-1/explain", "viewer").json()["holder"] is None
    # The lease's token is fenced for ever after.
    stale = lab.call("POST", f"/api/v1/leases/{lease['id']}/boards/arm-1/events/reboot",
                     lease["token"])
    assert stale.status_code == 409
    assert "has ended" in stale.text


def test_a_held_board_refuses_people_inside_a_shared_batch(lab: Lab, backend: str) -> None:
    """People's events share group-commit batches with everyone else's: in
    one batch the held board refuses the operator, a free board takes the
    operator's event, and the holder's event on the held board goes through
    (synchronously, through the committer threads and, on PostgreSQL, on the
    event loop's own connection)."""
    lease = lab.ask("alice", selector="arch=amd64", count=1, purpose="batch")
    assert lease["boards"] == ["x86-1"]

    def person(board: str, event: str) -> FireRequest:
        return FireRequest(kind="board", name=board, event=event, source="operator",
                           actor="op", reason="r", role=Role.OPERATOR)

    holder = FireRequest(kind="board", name="x86-1", event="reboot", source="operator",
                         actor="alice", reason="r", role=Role.HOLDER)
    outcomes = lab.engine.fire_batch([person("x86-1", "maintenance"), holder,
                                      person("arm-1", "maintenance")])
    assert isinstance(outcomes[0], Conflict)
    assert "held by lease" in str(outcomes[0])
    assert [type(o).__name__ for o in outcomes[1:]] == ["FireResult", "FireResult"]
    assert (lab.state("x86-1"), lab.state("arm-1")) == ("power_cycling", "maintenance")

    lab.engine.group.start(threads=2)
    with pytest.raises(Conflict, match="held by lease"):
        lab.engine.fire("board", "x86-1", "maintenance", source="operator", actor="op",
                        reason="r", role=Role.OPERATOR)
    lab.engine.fire("board", "arm-1", "leave_maintenance", source="operator", actor="op",
                    reason="r", role=Role.OPERATOR)
    if backend == "postgres":
        async def on_the_loop() -> list[Any]:
            conn = await lab.engine.store.connect_async()
            try:
                return await lab.engine.firing.fire_batch_async(
                    conn, [person("x86-1", "maintenance"), person("arm-1", "maintenance")])
            finally:
                await lab.engine.store.close_async(conn)

        looped = asyncio.run(on_the_loop())
        assert isinstance(looped[0], Conflict)
        assert "held by lease" in str(looped[0])
        assert type(looped[1]).__name__ == "FireResult"
    assert lab.state("x86-1") == "power_cycling"
    assert lab.call("GET", "/api/v1/boards/x86-1/holder", "viewer").json()["lease"] == \
        lease["id"]


def test_the_return_path_reimages_to_the_baseline(lab: Lab) -> None:
    lease = lab.ask("alice", board="x86-1")
    lab.call("POST", f"/api/v1/leases/{lease['id']}/release", "alice")
    lab.settle(1, step=1)
    assert lab.state("x86-1") in ("pxe_configuring", "pxe_boot_device", "pxe_power_cycling",
                                  "pxe_booting")
    lab.worker.run_pending()
    assert lab.show(lease["id"])["state"] == "returning"
    events = [h.event for h in reversed(lab.engine.history("board", "x86-1"))]
    assert events.index("lease_return") < events.index("power_off_ok")


def test_priority_then_fair_share_then_age(lab: Lab) -> None:
    first = lab.ask("alice", board="x86-1", on_return="power_cycle")
    lab.clock.advance(100)
    bob = lab.ask("bob", board="x86-1", on_return="power_cycle")
    alice = lab.ask("alice", board="x86-1", on_return="power_cycle")
    urgent = lab.ask("carol", board="x86-1", priority=5, on_return="power_cycle")
    assert [lab.show(x["id"])["state"] for x in (bob, alice, urgent)] == ["queued"] * 3
    explained = lab.call("GET", f"/api/v1/leases/{alice['id']}/explain", "alice").json()
    assert explained["position"]["place"] == 2
    assert explained["leased"] == 1
    assert explained["blocking"][0]["lease"] == first["id"]
    order = []
    for holder in (first, urgent, bob, alice):
        lab.call("POST", f"/api/v1/leases/{holder['id']}/release", holder["owner"])
        lab.settle(6)
        active = [x["id"] for x in lab.call("GET", "/api/v1/leases?state=active",
                                            "viewer").json()]
        order.append(active)
    # carol's priority first; then bob, whose share used no board-time, before alice.
    assert order[:3] == [[urgent["id"]], [bob["id"]], [alice["id"]]]


def test_the_queue_route_answers_the_order_the_scheduler_serves(lab: Lab) -> None:
    first = lab.ask("alice", board="x86-1", on_return="power_cycle")
    lab.clock.advance(100)
    bob = lab.ask("bob", board="x86-1", on_return="power_cycle", purpose="<b>nightly</b>")
    lab.clock.advance(5)
    alice = lab.ask("alice", board="x86-1", on_return="power_cycle")
    urgent = lab.ask("carol", selector="arch=amd64", priority=5, on_return="power_cycle",
                     project="kernel")
    answer = lab.call("GET", "/api/v1/leases/queue", "viewer")
    assert answer.status_code == 200, answer.text
    queue = answer.json()
    assert queue["queued"] == queue["shown"] == 3
    assert [(c["priority"], c["queued"]) for c in queue["classes"]] == [(5, 1), (0, 2)]
    low = queue["classes"][1]["leases"]
    # alice's share has held x86-1 for 105 s, bob's nothing: bob first, as the pass serves.
    assert [(x["place"], x["id"]) for x in low] == [(1, bob["id"]), (2, alice["id"])]
    assert [x["share_board_seconds"] for x in low] == [0, 105]
    assert low[0]["purpose"] == "<b>nightly</b>"
    assert low[0]["waited_seconds"] == 5.0
    top = queue["classes"][0]["leases"][0]
    assert (top["id"], top["selector"], top["project"]) == (urgent["id"], "arch=amd64", "kernel")
    assert not top["over_quota"]
    assert not top["reserving"]
    # The first in order, with every class still counted in full.
    one = lab.call("GET", "/api/v1/leases/queue?limit=1", "viewer").json()
    assert one["shown"] == 1
    assert [len(c["leases"]) for c in one["classes"]] == [1, 0]
    assert [c["queued"] for c in one["classes"]] == [1, 2]
    # The ranking is the one explain reports.
    explained = lab.call("GET", f"/api/v1/leases/{bob['id']}/explain", "viewer").json()
    assert explained["position"]["place"] == 1
    # Bad input is refused and changes nothing; holders and nobody else read it.
    assert lab.call("GET", "/api/v1/leases/queue?limit=0", "viewer").status_code == 422
    assert lab.call("GET", "/api/v1/leases/queue?priority=5", "viewer").status_code == 422
    assert lab.call("GET", "/api/v1/leases/queue", first["token"]).status_code == 403
    assert lab.call("GET", "/api/v1/leases/queue", "nobody").status_code == 401
    order = []
    for holder in (first, urgent, bob):
        lab.call("POST", f"/api/v1/leases/{holder['id']}/release", holder["owner"])
        lab.settle(6)
        order.append([x["id"] for x in lab.call("GET", "/api/v1/leases?state=active",
                                                "viewer").json()])
    assert order == [[urgent["id"]], [bob["id"]], [alice["id"]]]
    empty = lab.call("GET", "/api/v1/leases/queue", "viewer").json()
    assert (empty["queued"], empty["shown"], empty["classes"]) == (0, 0, [])
    # Ended leases, the last to end first; open and ended together: every
    # lease, newest first (a query the document allows is never a 422).
    ended = lab.call("GET", "/api/v1/leases?ended=true", "viewer").json()
    assert [x["id"] for x in ended] == [bob["id"], urgent["id"], first["id"]]
    both = lab.call("GET", "/api/v1/leases?ended=true&open=true", "viewer")
    assert both.status_code == 200
    every = lab.call("GET", "/api/v1/leases", "viewer").json()
    assert [x["id"] for x in both.json()] == [x["id"] for x in every]
    assert {x["id"] for x in every} >= {alice["id"], bob["id"], urgent["id"], first["id"]}


def test_several_boards_all_or_nothing_without_deadlock(lab: Lab) -> None:
    one = lab.ask("alice", selector="rack in (r1,r2,r3)", count=3, on_return="power_cycle")
    two = lab.ask("bob", selector="rack in (r1,r2,r3)", count=3, on_return="power_cycle")
    assert one["state"] == "active"
    assert len(one["boards"]) == 3
    assert two["state"] == "queued"
    assert two["boards"] == []
    lab.call("POST", f"/api/v1/leases/{one['id']}/release", "alice")
    lab.settle(4)
    assert lab.show(two["id"])["state"] == "active"


def test_selectors_quotas_and_bad_requests(lab: Lab) -> None:
    bad = lab.call("POST", "/api/v1/leases", "alice", json={"selector": "arch=="})
    assert bad.status_code == 422
    assert "selector term" in bad.text
    none = lab.call("POST", "/api/v1/leases", "alice", json={"selector": "arch=riscv"})
    assert none.status_code == 409
    assert "only 0 board(s)" in none.text
    both = lab.call("POST", "/api/v1/leases", "alice", json={"board": "arm-1", "count": 2})
    assert both.status_code == 422
    viewer = lab.call("POST", "/api/v1/leases", "viewer", json={"board": "arm-1"})
    assert viewer.status_code == 403
    over = lab.call("POST", "/api/v1/leases", "alice", json={"count": 4})
    assert over.status_code == 409
    assert "quota" in over.text
    for _ in range(6):  # one active, five queued
        lab.ask("bob", board="arm-3")
    sixth = lab.call("POST", "/api/v1/leases", "bob", json={"board": "arm-3"})
    assert sixth.status_code == 409
    assert "quota" in sixth.text
    broken = lab.ask("carol", selector="broken")
    assert broken["state"] == "queued"  # arm-3 is bob's first
    explained = lab.call("GET", f"/api/v1/leases/{broken['id']}/explain", "carol").json()
    assert explained["ruled_out"] == {"broken": 3}


def test_a_wait_times_out(lab: Lab) -> None:
    lab.ask("alice", board="arm-1")
    waiting = lab.ask("bob", board="arm-1", wait_timeout=30)
    lab.clock.advance(31)
    lab.engine.sweeper.sweep_timeouts()
    cancelled = lab.show(waiting["id"])
    assert (cancelled["state"], cancelled["ended_by"]) == ("cancelled", "wait_timeout")


def test_renewal_is_capped(lab: Lab) -> None:
    lease = lab.ask("alice", board="arm-1", duration=300)
    lab.clock.advance(200)
    renewed = lab.call("POST", f"/api/v1/leases/{lease['id']}/renew", lease["token"],
                       json={"duration": 300})
    assert renewed.status_code == 200, renewed.text
    capped = lab.call("POST", f"/api/v1/leases/{lease['id']}/renew", lease["token"],
                      json={"duration": 500})
    assert capped.status_code == 409
    assert "at most" in capped.text


def test_a_lost_heartbeat_ends_the_lease_and_fences_its_token(lab: Lab) -> None:
    lease = lab.ask("alice", board="arm-1", heartbeat=10, on_return="power_cycle")
    lab.clock.advance(8)
    assert lab.call("POST", f"/api/v1/leases/{lease['id']}/heartbeat",
                    lease["token"]).status_code == 200
    lab.clock.advance(8)
    lab.engine.sweeper.sweep_timeouts()
    assert lab.show(lease["id"])["state"] == "active"
    lab.clock.advance(3)
    lab.engine.sweeper.sweep_timeouts()
    assert lab.show(lease["id"])["state"] == "returning"
    stale = lab.call("POST", f"/api/v1/leases/{lease['id']}/boards/arm-1/events/reboot",
                     lease["token"])
    assert stale.status_code == 409
    lab.settle(4)
    ended = lab.show(lease["id"])
    assert ended["state"] == "expired"
    assert ended["ended_by"] == "heartbeat"
    assert lab.state("arm-1") == "ready"
    metrics = lab.call("GET", "/metrics", "viewer").text
    assert "corral_lease_refusals_total 1.0" in metrics


def test_only_an_admin_revokes_and_only_from_the_state_it_expects(lab: Lab) -> None:
    lease = lab.ask("alice", board="arm-1", on_return="power_cycle")
    path = f"/api/v1/leases/{lease['id']}/revoke"
    assert lab.call("POST", path, "operator", json={"reason": "x"}).status_code == 403
    wrong = lab.call("POST", path, "admin", json={"reason": "x", "if_state": "queued"})
    assert wrong.status_code == 409
    done = lab.call("POST", path, "admin", json={"reason": "rack work", "if_state": "active"})
    assert done.json()["state"] == "returning"
    assert lab.call("POST", f"/api/v1/leases/{lease['id']}/boards/arm-1/events/reboot",
                    lease["token"]).status_code == 409
    lab.settle(4)
    assert lab.show(lease["id"])["state"] == "revoked"


def test_a_large_request_keeps_free_boards_for_a_while_then_waits_again(lab: Lab) -> None:
    lab.scheduler.settings = lab.scheduler.settings.model_copy(
        update={"lease_reserve_after": 60, "lease_reserve_for": 600})
    first = lab.ask("alice", board="arm-1", on_return="power_cycle")
    big = lab.ask("bob", selector="arch=arm64", count=3, wait_timeout=1200,
                  on_return="power_cycle")
    small = lab.ask("carol", selector="arch=arm64", on_return="power_cycle")
    assert small["state"] == "active"      # bob has not waited long: carol goes on
    lab.clock.advance(60)
    lab.scheduler.run_pass()
    assert lab.show(big["id"])["state"] == "allocating"
    reserve = lab.engine.history("lease", big["id"])[0]
    assert reserve.event == "reserve"
    assert "1 free now" in reserve.reason
    # Now carol waits, even once her first board is back: bob keeps them.
    late = lab.ask("carol", selector="arch=arm64", on_return="power_cycle")
    assert late["state"] == "queued"
    lab.call("POST", f"/api/v1/leases/{small['id']}/release", "carol")
    lab.settle(4)
    assert lab.show(small["id"])["state"] == "closed"
    assert lab.show(late["id"])["state"] in ("queued", "allocating")   # not served
    assert [lab.state(b) for b in ("arm-2", "arm-3")] == ["ready", "ready"]
    explained = lab.call("GET", f"/api/v1/leases/{big['id']}/explain", "bob").json()
    assert explained["keeps_until"] == "2026-01-01T00:11:00+00:00"  # reserved at 00:01
    assert f"until {explained['keeps_until']}, then waits again" in explained["why"]
    assert lab.show(big["id"])["deadline"] == big["wait_until"]  # its wait still counts
    # Ten minutes after it began, bob gives them back and waits again: carol goes first.
    lab.clock.advance(600 - 4 * 46)
    lab.scheduler.run_pass()
    again = lab.show(big["id"])
    assert again["state"] == "queued"
    assert again["deadline"] == again["wait_until"]
    assert lab.show(late["id"])["state"] == "active"
    # Once every board it needs is free, the large request gets them all.
    for lease, who in ((first, "alice"), (late, "carol")):
        lab.call("POST", f"/api/v1/leases/{lease['id']}/release", who)
    lab.settle(4)
    done = lab.show(big["id"])
    assert done["state"] == "active"
    assert sorted(done["boards"]) == ["arm-1", "arm-2", "arm-3"]
    events = [h.event for h in reversed(lab.engine.history("lease", big["id"]))]
    assert events[:4] == ["create", "queue", "reserve", "wait_again"]
    # Returned boards are health-checked one at a time (a quarter of the
    # lab), so it may keep the first one back again before it has all three.
    assert set(events[4:-2]) <= {"reserve", "wait_again"}
    assert events[-2:] == ["allocated", "prepared"]


def _end(lab: Lab, how: str) -> dict[str, Any]:
    """A lease of arm-1 by alice, ended ``how``; returns it (with its token)."""
    if how == "failed":
        # The board must be reimaged first, and no board in this lab reports
        # back: the lease's preparation times out.
        lease = lab.ask("alice", board="arm-1", release="never-boots", heartbeat=None)
        assert lab.show(lease["id"])["state"] == "preparing"
        lab.settle(90, step=60)
        return lease
    lease = lab.ask("alice", board="arm-1", duration=120, heartbeat=30,
                    on_return="power_cycle")
    path = f"/api/v1/leases/{lease['id']}"
    if how == "released":
        assert lab.call("POST", f"{path}/release", lease["token"]).status_code == 200
    elif how == "revoked":
        assert lab.call("POST", f"{path}/revoke", "admin",
                        json={"reason": "rack work"}).status_code == 200
    elif how == "expired":
        for _ in range(5):  # keep the heartbeat; the duration runs out
            lab.clock.advance(25)
            lab.call("POST", f"{path}/heartbeat", lease["token"])
            lab.engine.sweeper.sweep_timeouts()
    elif how == "heartbeat":
        lab.clock.advance(31)
        lab.engine.sweeper.sweep_timeouts()
    lab.settle(4)
    return lease


@pytest.mark.parametrize("how", ["released", "expired", "heartbeat", "revoked", "failed"])
def test_a_stale_token_is_refused_after_each_way_a_lease_ends(lab: Lab, how: str) -> None:
    lease = _end(lab, how)
    ended = lab.show(lease["id"])
    assert ended["ended_by"] == how
    assert ended["state"] == {"released": "closed", "heartbeat": "expired"}.get(how, how)
    if how != "failed":
        # The board is someone else's now: the old token's epoch is not its.
        assert lab.state("arm-1") == "ready"
        bob = lab.ask("bob", board="arm-1", on_return="power_cycle")
        assert bob["state"] == "active"
    before = [h.id for h in lab.engine.history("board", "arm-1")]
    path = f"/api/v1/leases/{lease['id']}"
    for method, tail, body in [("POST", "/boards/arm-1/events/reboot", None),
                               ("POST", "/boards/arm-1/events/reimage", {"release": "x"}),
                               ("POST", "/heartbeat", None),
                               ("POST", "/renew", {"duration": 60})]:
        stale = lab.call(method, path + tail, lease["token"], json=body)
        assert stale.status_code == 409, (tail, stale.text)
        assert "has ended" in stale.json()["message"], stale.text
    # Nothing happened to the board, whoever holds it now.
    assert [h.id for h in lab.engine.history("board", "arm-1")] == before
    if how != "failed":
        assert lab.state("arm-1") == "leased"
        assert lab.call("GET", "/api/v1/boards/arm-1/holder",
                        "viewer").json()["lease"] == bob["id"]
    metrics = lab.call("GET", "/metrics", "viewer").text
    assert "corral_lease_refusals_total 4.0" in metrics


PLUGGED = '''
import pytest

@pytest.mark.corral_lease(selector="arch=arm64,rack=r1", on_return="power_cycle")
def test_holds_its_board(corral_lease):
    assert corral_lease.boards == ["arm-1"]
    assert corral_lease.board("arm-1")["state"] == "leased"
    assert corral_lease.fire("arm-1", "reboot")["to_state"] == "power_cycling"

@pytest.mark.corral_lease(board="x86-1", on_return="power_cycle")
def test_fails_and_still_gives_its_board_back(corral_lease):
    assert corral_lease.boards == ["x86-1"]
    raise AssertionError("the board misbehaved")
'''


def test_the_pytest_plugin_leases_heartbeats_and_releases_even_on_failure(
        lab: Lab, tmp_path: Any) -> None:
    import subprocess
    import sys

    (tmp_path / "test_plugged.py").write_text(PLUGGED)
    url = str(lab.http.base_url).rstrip("/")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "corral.pytest_plugin", "-p",
         "no:cacheprovider", "--corral-url", url, "--corral-wait", "30", "test_plugged.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "CORRAL_TOKEN": lab.tokens["alice"]})
    assert "1 failed, 1 passed" in run.stdout, run.stdout + run.stderr
    leases = lab.call("GET", "/api/v1/leases", "viewer").json()
    assert len(leases) == 2
    for lease in leases:
        assert lease["owner"] == "alice"
        assert lease["ended_by"] == "released"
        assert lease["heartbeat"] == 60
        assert lease["purpose"].startswith("pytest test_plugged.py::")
    lab.settle(4)
    assert [lab.state(b) for b in ("arm-1", "x86-1")] == ["ready", "ready"]
