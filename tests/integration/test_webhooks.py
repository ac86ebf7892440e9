"""Webhooks against a real HTTP receiver that checks every signature: each
event of a run arrives (at least once, exactly once after deduplication by
event id, in id order), a 500 is retried with backoff, a subscription that
keeps failing is marked failing (and shows in /metrics), and a worker killed
with SIGKILL mid-delivery loses nothing."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest

from corral.api.metrics import build_registry
from corral.errors import Conflict, InvalidRequest
from corral.webhook_targets import TargetPolicy
from corral.webhooks import (
    EVENT_ID,
    SIGNATURE,
    WebhookDelivery,
    add_subscription,
    list_subscriptions,
    verify,
)
from tests.acceptance.test_http import CORRAL
from tests.integration.helpers import history_count

SECRET = "whsec-0123456789abcdef"
# The receivers here listen on loopback, which the default policy refuses.
LOCAL = TargetPolicy(allow=(ipaddress.ip_network("127.0.0.0/8"),))


class Receiver:
    """A webhook receiver: verifies the signature, answers 500 to the first
    ``fail_first`` deliveries (or all, with ``always_fail``)."""

    def __init__(self, *, fail_first: int = 0, always_fail: bool = False,
                 delay: float = 0.0, error_body: bytes = b"") -> None:
        self.fail_first, self.always_fail, self.delay = fail_first, always_fail, delay
        self.error_body = error_body
        self.authorizations: list[str | None] = []
        self.accepted: list[int] = []
        self.requests = 0
        self.bad_signatures = 0
        self.documents: dict[int, dict] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                receiver.authorizations.append(self.headers.get("Authorization"))
                if receiver.delay:
                    time.sleep(receiver.delay)
                if not verify(SECRET, body, self.headers.get(SIGNATURE, "")):
                    receiver.bad_signatures += 1
                    status = 401
                elif receiver.always_fail or receiver.requests <= receiver.fail_first:
                    status = 500
                else:
                    event = int(self.headers[EVENT_ID])
                    document = json.loads(body)
                    assert document["id"] == event
                    receiver.accepted.append(event)
                    receiver.documents[event] = document
                    status = 204
                answer = receiver.error_body if status == 500 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _history_ids(engine) -> list[int]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from corral.store.schema import history

    with engine.store.sa.begin() as conn:
        return [r[0] for r in conn.execute(select(history.c.id).order_by(history.c.id))]


def test_every_event_arrives_once_in_order_after_retries(engine, clock):
    receiver = Receiver(fail_first=3)
    try:
        engine.import_machines("board", {f"w{i}": {} for i in range(4)})
        add_subscription(engine, name="audit", url=receiver.url, filters={"kind": ["board"]},
                         secret=SECRET, from_start=True)
        for n in range(24):
            engine.force_state("board", f"w{n % 4}", "maintenance" if n % 2 else "ready",
                               actor="t", reason=f"event {n}")
        delivery = WebhookDelivery(engine.store, clock, owner="t", policy=LOCAL)
        for _ in range(20):
            delivery.deliver_pass()
            clock.advance(10)  # past any backoff
        every = _history_ids(engine)
        assert receiver.bad_signatures == 0
        assert receiver.requests == len(every) + 3        # three 500s, each retried
        assert receiver.accepted == every                  # once each, in id order
        by_machine: dict[str, list[int]] = {}
        for event in receiver.accepted:
            by_machine.setdefault(receiver.documents[event]["name"], []).append(event)
        assert all(ids == sorted(ids) for ids in by_machine.values())
        with engine.store.unit() as tx:
            [hook] = tx.webhooks.list()
        assert (hook["status"], hook["failures"], hook["delivered"]) == ("ok", 0, len(every))
        assert "secret" not in hook
    finally:
        receiver.close()


def test_a_receiver_that_keeps_failing_marks_the_subscription_failing(engine, clock):
    receiver = Receiver(always_fail=True)
    try:
        engine.create("board", "f1")
        add_subscription(engine, name="broken", url=receiver.url, filters={}, secret=SECRET,
                         from_start=True)
        delivery = WebhookDelivery(engine.store, clock, owner="t", failing_after=3,
                                   policy=LOCAL)
        waits = []
        for _ in range(4):
            delivery.deliver_pass()
            with engine.store.unit() as tx:
                [hook] = tx.webhooks.list()
            waits.append(round((hook["next_attempt_at"] - clock()).total_seconds()))
            clock.advance(600)
        assert waits == [1, 2, 4, 8]                       # doubling backoff
        assert (hook["status"], hook["failures"]) == ("failing", 4)
        assert hook["last_error"].startswith("HTTP 500")
        assert hook["cursor"] == 0                         # nothing passed over
        text = generate_latest(build_registry(engine, multiprocess=False)).decode()
        assert 'corral_webhook_failing{webhook="broken"} 1.0' in text
    finally:
        receiver.close()


def test_subscriptions_refuse_bad_input(engine):
    with pytest.raises(InvalidRequest, match="http:// or https://"):
        add_subscription(engine, name="a", url="ftp://x/", filters={}, secret=SECRET)
    with pytest.raises(InvalidRequest, match="at least 16 characters"):
        add_subscription(engine, name="a", url="http://x/", filters={}, secret="short")
    with pytest.raises(InvalidRequest, match="unknown filter 'colour'"):
        add_subscription(engine, name="a", url="http://x/", filters={"colour": "red"},
                         secret=SECRET)
    add_subscription(engine, name="a", url="http://x/", filters={}, secret=SECRET)
    with pytest.raises(Conflict, match="exists"):
        add_subscription(engine, name="a", url="http://x/", filters={}, secret=SECRET)


def test_signatures_refuse_other_keys_and_replays():
    body = b'{"id":1}'
    from corral.webhooks import signature

    now = int(time.time())
    assert verify(SECRET, body, signature(SECRET, body, now))
    assert not verify("another-secret-0000", body, signature(SECRET, body, now))
    assert not verify(SECRET, b'{"id":2}', signature(SECRET, body, now))
    assert not verify(SECRET, body, signature(SECRET, body, now - 3600))  # a replay
    assert not verify(SECRET, body, "t=x,v1=y")


@pytest.mark.slow
def test_no_event_is_lost_when_the_worker_is_killed_mid_delivery(migrated_url, tmp_path):
    from corral.engine.core import Engine
    from corral.machines import MachineSet, load_definitions
    from corral.paths import DEFAULT_STATEMACHINES_DIR
    from corral.store import open_store

    store = open_store(migrated_url)
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    engine.import_machines("board", {f"k{i}": {} for i in range(10)})
    for n in range(60):
        engine.force_state("board", f"k{n % 10}", "maintenance", actor="t", reason=f"e{n}")
    receiver = Receiver(delay=0.05)
    add_subscription(engine, name="durable", url=receiver.url, filters={}, secret=SECRET,
                     from_start=True)
    env = os.environ | {"CORRAL_DATABASE_URL": migrated_url, "CORRAL_LOG_FORMAT": "json",
                        "CORRAL_WEBHOOK_LEASE": "3", "CORRAL_WEBHOOK_INTERVAL": "0.1",
                        "CORRAL_COMMAND_BOOT_LOCAL": "true",
                        "CORRAL_WEBHOOK_ALLOW": "127.0.0.1/32"}

    def worker() -> subprocess.Popen:
        with (tmp_path / "worker.log").open("a") as log:
            return subprocess.Popen([CORRAL, "serve", "--role", "worker"], env=env,
                                    stdout=log, stderr=log)

    try:
        first = worker()
        deadline = time.monotonic() + 60
        while len(receiver.accepted) < 15:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)   # mid-delivery: its lease is left behind
        first.wait(timeout=10)
        second = worker()
        try:
            deadline = time.monotonic() + 90
            while True:
                every = _history_ids(engine)
                if sorted(set(receiver.accepted)) == every and history_count(engine) == len(
                        every):
                    break
                assert time.monotonic() < deadline, (
                    f"{len(set(receiver.accepted))} of {len(every)} delivered; "
                    + (tmp_path / "worker.log").read_text()[-2000:])
                time.sleep(0.2)
        finally:
            second.terminate()
            second.wait(timeout=30)
        assert receiver.bad_signatures == 0
        # At least once: a redelivery after the kill is possible, a gap is not.
        assert sorted(set(receiver.accepted)) == _history_ids(engine)
    finally:
        receiver.close()
        store.dispose()


def test_a_subscription_holding_nul_is_refused_not_stored(engine):
    with pytest.raises(InvalidRequest, match=r"webhook\.url"):
        add_subscription(engine, name="n", url="http://x/\x00", filters={}, secret=SECRET)
    with engine.store.unit() as tx:
        assert tx.webhooks.list() == []


def test_lease_transitions_and_the_expiry_warning_reach_a_lease_subscription(engine, clock):
    """A subscription to kind `lease` gets each lease's life, warning included,
    and nothing of the boards it held."""
    from corral.config import Settings
    from corral.leases import Caller, LeaseRequest, LeaseService, install
    from corral.leases.scheduler import LeaseScheduler

    install(engine)
    settings = Settings(sim_operation_seconds=0, lease_expiry_warning=60)
    scheduler = LeaseScheduler(engine, settings)
    leases = LeaseService(engine, settings, kick=scheduler.run_pass)
    engine.import_machines("board", {"l1": {"arch": "arm64"}})
    engine.force_state("board", "l1", "ready", actor="t", reason="lab")
    receiver = Receiver()
    try:
        add_subscription(engine, name="leases", url=receiver.url,
                         filters={"kind": ["lease"]}, secret=SECRET)
        lease = leases.request(LeaseRequest(board="l1", duration=120, on_return="power_cycle"),
                               Caller(name="alice", role="user"))
        clock.advance(61)
        scheduler.run_pass()                               # the warning
        clock.advance(60)
        engine.sweeper.sweep_timeouts()                    # the expiry
        delivery = WebhookDelivery(engine.store, clock, owner="t", policy=LOCAL)
        delivery.deliver_pass()
        documents = [receiver.documents[e] for e in receiver.accepted]
        assert {d["kind"] for d in documents} == {"lease"}
        assert {d["name"] for d in documents} == {lease["id"]}
        events = [d["event"] for d in documents]
        assert events == ["create", "queue", "allocated", "prepared", "expiry_warning",
                          "timeout"]
        warning = documents[4]
        assert warning["to_state"] == "active"
        assert receiver.accepted == sorted(receiver.accepted)
    finally:
        receiver.close()


def _hook(engine, name):  # type: ignore[no-untyped-def]
    with engine.store.unit() as tx:
        return next(h for h in tx.webhooks.list() if h["name"] == name)


def test_the_default_policy_refuses_a_loopback_receiver_before_connecting(engine, clock):
    receiver = Receiver()
    try:
        engine.create("board", "p1")
        add_subscription(engine, name="inside", url=receiver.url, filters={}, secret=SECRET,
                         from_start=True)
        assert WebhookDelivery(engine.store, clock, owner="t").deliver_pass() == 0
        hook = _hook(engine, "inside")
        assert receiver.requests == 0                       # never connected
        assert hook["status"] == "failing"
        assert hook["last_error"].startswith("127.0.0.1 is a loopback address")
        assert hook["cursor"] == 0
        assert (hook["next_attempt_at"] - clock()).total_seconds() == 300   # longest backoff
    finally:
        receiver.close()


def test_a_poisoned_stored_url_is_marked_failing_and_the_others_still_deliver(engine, clock):
    """Rows stored before the URL check (or by hand) with CR/LF, spaces or
    control characters in the URL: the pass marks each failing with a reason
    and delivers the good subscription all the same."""
    receiver = Receiver()
    poisoned = ["http://x/\r\nX-Injected: 1", "http://x y/", "http://x/\x01", "gopher://x/"]
    try:
        engine.create("board", "g1")
        with engine.store.unit() as tx:
            for n, url in enumerate(poisoned):
                tx.webhooks.add(name=f"bad-{n}", url=url, filters={}, secret=SECRET, cursor=0,
                                now=clock())
        add_subscription(engine, name="good", url=receiver.url, filters={}, secret=SECRET,
                         from_start=True)
        delivered = WebhookDelivery(engine.store, clock, owner="t", policy=LOCAL).deliver_pass()
        assert delivered == len(_history_ids(engine))
        assert receiver.accepted == _history_ids(engine)
        for n in range(len(poisoned)):
            hook = _hook(engine, f"bad-{n}")
            assert hook["status"] == "failing"
            assert hook["last_error"].startswith("a webhook URL is http:// or https://")
            assert not any(ord(c) < 32 for c in hook["last_error"])
        assert _hook(engine, "good")["status"] == "ok"
    finally:
        receiver.close()


def test_last_error_keeps_only_the_status_line_and_a_short_clean_excerpt(engine, clock):
    body = b"\x1b[31mboom\r\n\tat line 1\x00" + b"A" * 2_000_000
    receiver = Receiver(always_fail=True, error_body=body)
    try:
        engine.create("board", "e1")
        add_subscription(engine, name="noisy", url=receiver.url, filters={}, secret=SECRET,
                         from_start=True)
        WebhookDelivery(engine.store, clock, owner="t", policy=LOCAL).deliver_pass()
        error = _hook(engine, "noisy")["last_error"]
        assert error.startswith("HTTP 500 Internal Server Error: [31mboom at line 1 AAA")
        assert len(error) <= 300
        assert error.endswith("…")
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in error)
    finally:
        receiver.close()


def test_a_password_in_the_url_is_used_but_never_shown(engine, clock, tmp_path, capsys):
    receiver = Receiver(always_fail=True)
    url = receiver.url.replace("http://", "http://relay:hunter2-not-shown@")
    try:
        engine.create("board", "u1")
        added = add_subscription(engine, name="basic", url=url, filters={}, secret=SECRET,
                                 from_start=True)
        assert added["url"] == receiver.url.replace("http://", "http://relay:***@")
        [listed] = list_subscriptions(engine.store)
        assert listed["url"] == added["url"]
        with pytest.raises(InvalidRequest) as refused:
            add_subscription(engine, name="b2", url=url + " x", filters={}, secret=SECRET)
        assert "hunter2" not in str(refused.value)
        assert "relay:***@" in str(refused.value)
        WebhookDelivery(engine.store, clock, owner="t", policy=LOCAL).deliver_pass()
        assert receiver.authorizations[0] == "Basic cmVsYXk6aHVudGVyMi1ub3Qtc2hvd24="
        assert "hunter2" not in _hook(engine, "basic")["last_error"]
        assert "hunter2" not in capsys.readouterr().out
    finally:
        receiver.close()
