"""The HTTP service as boards, operators and Prometheus use it: a real
`corral serve` on a free loopback port, a real HTTP client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.engine.core import Engine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from tests.processes import stop

CORRAL = str(Path(sys.executable).with_name("corral"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A running `corral serve --role api` and the CLI beside it."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.env = os.environ | {"CORRAL_DATABASE_URL": url, "CORRAL_LOG_FORMAT": "json",
                                 "CORRAL_TOKEN_CACHE_SECONDS": "0"}
        self.tmp = tmp
        self.base = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        result = subprocess.run([CORRAL, *args], env=self.env, cwd=self.tmp,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def start(self) -> None:
        with (self.tmp / "serve.log").open("a") as log:
            self.process = subprocess.Popen(
                [CORRAL, "serve", "--role", "api", "--listen",
                 self.base.removeprefix("http://")],
                env=self.env, cwd=self.tmp, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError((self.tmp / "serve.log").read_text())

    def stop(self) -> None:
        if self.process is not None:
            log = self.tmp / "serve.log"
            assert stop(self.process, log=log, what="corral serve") == 0, log.read_text()

    def post(self, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.post(self.base + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, token: str | None = None, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.base + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def lab(migrated_url, tmp_path):
    lab = Lab(migrated_url, tmp_path)
    (tmp_path / "lab.yaml").write_text("boards:\n" + "".join(
        f"  - {{name: b{i}, arch: arm64}}\n" for i in range(1, 6)))
    lab.cli("board", "import", "lab.yaml")
    # The CLI's force-state has its own tests; here it would cost a process each.
    db = open_store(migrated_url)
    engine = Engine(db, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    for i in range(1, 6):
        engine.force_state("board", f"b{i}", "ready", actor="test", reason="test set-up")
    # b1 network-boots: its own token has its second stage's events to report.
    engine.force_state("board", "b1", "pxe_booting", actor="test", reason="test set-up")
    db.dispose()
    lab.start()
    yield lab
    lab.stop()


def test_callback_path_end_to_end(lab):
    token = lab.cli("board", "token", "b1")
    reply = lab.post("/api/v1/boards/b1/events/second_stage_started", token,
                     json={"uptime": 12})
    assert reply.status_code == 200
    body = reply.json()
    assert (body["kind"], body["name"], body["from_state"], body["state"]) == (
        "board", "b1", "pxe_booting", "installing")
    reply = lab.post("/api/v1/boards/b1/events/install_ok", token)
    assert reply.json()["state"] == "rebooting"
    assert reply.json()["epoch"] == body["epoch"] + 1
    operator = lab.cli("token", "create", "ann", "--role", "viewer")
    history = lab.get("/api/v1/boards/b1/history", operator).json()["entries"]
    started = next(e for e in history if e["event"] == "second_stage_started")
    assert (started["source"], started["actor"], started["payload"]) == (
        "callback", "board:b1", {"uptime": 12})


def test_every_status(lab):
    token = lab.cli("board", "token", "b1")
    operator = lab.cli("token", "create", "ops", "--role", "operator")
    report = "/api/v1/boards/{}/events/second_stage_started"
    cases = [
        (lab.post(report.format("b1")), 401, "unauthorized"),
        (lab.post(report.format("b1"), "corral_1_wrong"), 401, "unauthorized"),
        (lab.post(report.format("b1"), "garbage"), 401, "unauthorized"),
        (lab.post(report.format("b2"), token), 403, "forbidden"),
        (lab.post("/api/v1/boards/ghost/events/reboot", operator), 404, "not_found"),
        (lab.post("/api/v1/boards/b1/events/install_ok", token), 409, "event_not_allowed"),
        (lab.post(report.format("b1"), token, content="{bad",
                  headers={"Content-Type": "application/json"}), 422, "invalid_request"),
        (lab.post(report.format("b1"), token, json=[1, 2]), 422, "invalid_request"),
        (lab.post("/api/v1/boards/b1/events/Not-An-Event", token), 422, "invalid_request"),
        (lab.post("/api/v1/boards/b1/events/retire", token), 403, "forbidden"),
        (lab.post("/api/v1/boards/b1/events/power_cycle_ok", operator), 403, "forbidden"),
    ]
    for reply, status, error in cases:
        assert (reply.status_code, reply.json()["error"]) == (status, error), reply.text
    assert cases[0][0].headers["WWW-Authenticate"] == "Bearer"
    # What this token may fire in the board's state.
    conflict = cases[5][0].json()
    assert conflict["allowed_events"] == ["maintenance_requested", "second_stage_started"]
    # None of the refused requests changed anything.
    board = lab.get("/api/v1/boards/b1", operator).json()
    assert (board["state"], board["epoch"]) == ("pxe_booting", 3)


def test_malformed_callbacks_change_nothing(lab):
    """What the callback front refuses before the engine sees it."""
    token = lab.cli("board", "token", "b1")
    viewer = lab.cli("token", "create", "vic", "--role", "viewer")
    before = lab.get("/api/v1/boards/b1/history", viewer).json()["entries"]
    json_type = {"Content-Type": "application/json"}
    report = "/api/v1/boards/b1/events/second_stage_started"
    cases = [
        # Larger than MAX_PAYLOAD (64 KiB).
        (lab.post(report, token,
                  json={"log": "x" * 70_000}), 413, "payload_too_large"),
        # A form is not JSON: 415, saying to send JSON.
        (lab.post(report, token, content="uptime=12",
                  headers={"Content-Type": "application/x-www-form-urlencoded"}), 415,
         "unsupported_media_type"),
        # Python would read NaN; no database stores it as JSON.
        (lab.post(report, token, content='{"temp": NaN}',
                  headers=json_type), 422, "invalid_request"),
        (lab.post(report, token, content="12",
                  headers=json_type), 422, "invalid_request"),
        # JSON, but not storable: a NUL and an unpaired surrogate.
        (lab.post(report, token, content='{"a": "x\\u0000"}',
                  headers=json_type), 422, "invalid_request"),
        (lab.post(report, token, content='{"a": "\\ud800"}',
                  headers=json_type), 422, "invalid_request"),
        (lab.post(report, token,
                  headers={"Idempotency-Key": "k" * 201}), 422, "invalid_request"),
        (lab.post("/api/v1/boards/b%20b/events/reboot", token), 422, "invalid_request"),
        # A name pattern's $ must not let a trailing newline through.
        (lab.post("/api/v1/boards/b1%0A/events/reboot", token), 422, "invalid_request"),
    ]
    for reply, status, error in cases:
        assert (reply.status_code, reply.json()["error"]) == (status, error), reply.text
    assert "65536" in cases[0][0].json()["message"]
    assert "NaN" in cases[2][0].json()["message"]
    assert cases[7][0].json()["details"][0]["loc"] == ["path", "name"]
    assert lab.get("/api/v1/boards/b1/history", viewer).json()["entries"] == before
    # A JSON null, a JSON type with parameters and a +json type are payloads.
    assert lab.post(report, token, content="null",
                    headers=json_type).status_code == 200
    assert lab.post("/api/v1/boards/b1/events/install_failed", token,
                    content='{"a": "caf\\u00e9 \\ud83d\\ude00"}',
                    headers={"Content-Type": "application/json; charset=utf-8"}
                    ).status_code == 200
    admin = lab.cli("token", "create", "ada", "--role", "admin")
    reply = lab.post("/api/v1/boards/b1/events/maintenance", admin, content='{"a": 2}',
                     headers={"Content-Type": "application/vnd.corral+json"})
    assert (reply.status_code, reply.json()["state"]) == (200, "maintenance")
    # Other methods on the path still get the framework's 405.
    reply = httpx.get(lab.base + "/api/v1/boards/b1/events/reboot", timeout=30)
    assert (reply.status_code, reply.headers["Allow"]) == (405, "POST")


def test_idempotency_key_returns_the_first_response(lab):
    token = lab.cli("board", "token", "b1")
    report = "/api/v1/boards/b1/events/second_stage_started"
    first = lab.post(report, token, headers={"Idempotency-Key": "req-1"})
    again = lab.post(report, token, headers={"Idempotency-Key": "req-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() | {"replayed": True} == again.json()
    refused = lab.post(report, token, headers={"Idempotency-Key": "req-2"})
    assert refused.status_code == 409
    # A key answers only its own board and event.
    reused = lab.post("/api/v1/boards/b1/events/install_ok", token,
                      headers={"Idempotency-Key": "req-1"})
    assert reused.status_code == 409
    viewer = lab.cli("token", "create", "v", "--role", "viewer")
    history = lab.get("/api/v1/boards/b1/history", viewer).json()["entries"]
    assert [e["event"] for e in history].count("second_stage_started") == 1
    assert "install_ok" not in [e["event"] for e in history]


def test_token_rotation_and_revocation(lab):
    old = lab.cli("board", "token", "b1")
    assert lab.get("/api/v1/boards/b1", old).status_code == 200
    new = lab.cli("board", "token", "b1")
    assert lab.get("/api/v1/boards/b1", old).status_code == 401
    assert lab.post("/api/v1/boards/b1/events/second_stage_started", old).status_code == 401
    assert lab.post("/api/v1/boards/b1/events/second_stage_started", new).status_code == 200
    lab.cli("token", "revoke", "board:b1")
    assert lab.get("/api/v1/boards/b1", new).status_code == 401


def test_roles(lab):
    viewer = lab.cli("token", "create", "vic", "--role", "viewer")
    operator = lab.cli("token", "create", "olga", "--role", "operator")
    admin = lab.cli("token", "create", "ada", "--role", "admin")
    force = {"state": "maintenance", "reason": "swap SD card"}
    assert lab.get("/api/v1/boards", viewer).status_code == 200
    assert lab.get("/api/v1/boards").status_code == 401
    assert lab.post("/api/v1/boards/b1/force-state", viewer, json=force).status_code == 403
    assert lab.post("/api/v1/boards/b1/events/reboot", viewer).status_code == 403
    reply = lab.post("/api/v1/boards/b1/force-state", operator, json=force)
    assert reply.status_code == 200
    assert reply.json()["state"] == "maintenance"
    assert lab.post("/api/v1/boards/b1/retire", operator,
                    json={"reason": "dead"}).status_code == 403
    assert lab.post("/api/v1/boards/b1/retire", admin,
                    json={"reason": "dead"}).json()["state"] == "retired"
    history = lab.get("/api/v1/boards/b1/history", viewer).json()["entries"]
    assert [(e["event"], e["actor"], e["reason"]) for e in history[:2]] == [
        ("retire", "ada", "dead"), ("force_state", "olga", "swap SD card")]
    # A conditional force-state that does not match changes nothing.
    reply = lab.post("/api/v1/boards/b2/force-state", operator,
                     json={"state": "maintenance", "reason": "x", "if_state": "new"})
    assert reply.status_code == 409
    assert lab.post("/api/v1/boards/b2/force-state", operator,
                    json={"state": "ready"}).status_code == 422


def test_maintenance_list_filters_and_history_paging(lab):
    operator = lab.cli("token", "create", "o", "--role", "operator")
    on = lab.post("/api/v1/boards/b3/maintenance", operator, json={"on": True, "reason": "x"})
    assert on.json()["state"] == "maintenance"
    listed = lab.get("/api/v1/boards", operator, params={"state": "maintenance"}).json()
    assert [b["name"] for b in listed] == ["b3"]
    off = lab.post("/api/v1/boards/b3/maintenance", operator, json={"on": False})
    assert off.json()["state"] == "power_cycling"
    page = lab.get("/api/v1/boards/b3/history", operator, params={"limit": 2}).json()
    assert len(page["entries"]) == 2
    older = lab.get("/api/v1/boards/b3/history", operator,
                    params={"limit": 2, "before": page["next_before"]}).json()
    ids = [e["id"] for e in page["entries"] + older["entries"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 4


def test_metrics_count_failed_boards(lab):
    operator = lab.cli("token", "create", "o", "--role", "operator")
    for name, state in (("b1", "failed_pinging"), ("b2", "failed_power_cycling"),
                        ("b3", "failed_pinging"), ("b4", "maintenance")):
        assert lab.post(f"/api/v1/boards/{name}/force-state", operator,
                        json={"state": state, "reason": "test"}).status_code == 200
    lab.post("/api/v1/boards/b5/events/leave_maintenance", operator)
    text = lab.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("corral_failed_machines", (("kind", "board"),))] == 3
    assert samples[("corral_machines", (("kind", "board"), ("state", "failed_pinging")))] == 2
    assert samples[("corral_machines", (("kind", "board"), ("state", "ready")))] == 1
    refused = ("corral_events_total", (("event", "leave_maintenance"), ("kind", "board"),
                                       ("outcome", "refused"), ("source", "operator")))
    assert samples[refused] == 1
    assert ("corral_operations_queued", ()) in samples
    assert ("corral_event_commit_seconds_count", ()) in samples


def test_health_and_readiness(lab):
    assert lab.get("/healthz").json() == {"status": "ok"}
    assert lab.get("/readyz").json() == {"status": "ready"}
    assert lab.get("/openapi.json").json()["info"]["title"] == "Corral"


def test_cli_against_the_server_matches_the_local_cli(lab):
    # An admin, as the local CLI is (it holds the database's credentials).
    operator = lab.cli("token", "create", "remote-ops", "--role", "admin")

    def run(*args: str, remote: bool) -> subprocess.CompletedProcess:
        env = lab.env | ({"CORRAL_URL": lab.base, "CORRAL_TOKEN": operator} if remote else {})
        return subprocess.run([CORRAL, *args], env=env, cwd=lab.tmp, capture_output=True,
                              text=True, timeout=60)

    local = run("board", "list", "--json", remote=False)
    remote = run("board", "list", "--json", remote=True)
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert local.stdout == remote.stdout.replace("Z\"", "+00:00\"")
    for args in (("board", "event", "b2", "leave_maintenance"), ("board", "show", "ghost"),
                 ("board", "list", "--state", "nowhere"),
                 ("board", "force-state", "b1", "maintenance", "--reason", "x",
                  "--if-state", "new")):
        here, there = run(*args, remote=False), run(*args, remote=True)
        assert (here.returncode, here.stderr) == (there.returncode, there.stderr), args
        assert here.returncode in (3, 4)
    moved = run("board", "force-state", "b2", "maintenance", "--reason", "remote", remote=True)
    assert moved.stdout.strip() == "b2: ready -> maintenance (epoch 3)"
    shown = run("board", "history", "b2", "--json", remote=True)
    assert json.loads(shown.stdout)[0]["actor"] == "remote-ops"
    no_token = subprocess.run([CORRAL, "--url", lab.base, "board", "list"],
                              env={k: v for k, v in lab.env.items() if k != "CORRAL_TOKEN"},
                              capture_output=True, text=True, timeout=60)
    assert no_token.returncode == 7
    assert "CORRAL_TOKEN" in no_token.stderr
    down = subprocess.run([CORRAL, "--url", "http://127.0.0.1:1", "board", "list"],
                          env=lab.env | {"CORRAL_TOKEN": operator}, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 6
    assert down.stderr.startswith("error: cannot reach")


def test_simulated_boards_report_over_http(lab):
    lab.cli("board", "import", "lab.yaml")
    (lab.tmp / "sim.yaml").write_text("boards:\n  - {name: sim-0001}\n")
    lab.cli("board", "import", "sim.yaml")
    lab.cli("board", "force-state", "sim-0001", "pxe_booting", "--reason", "test")
    env = lab.env | {"CORRAL_SIM_BOOT_SECONDS": "0", "CORRAL_SIM_INSTALL_SECONDS": "0",
                     "CORRAL_SIM_INSTALL_FAILURE": "0", "CORRAL_SIM_REIMAGE_RATE": "0"}
    result = subprocess.run([CORRAL, "simulate", "boards", "--count", "1", "--url", lab.base,
                             "--seconds", "4"], env=env, cwd=lab.tmp, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "second_stage_started_200=1" in result.stdout
    assert "install_ok_200=1" in result.stdout
    viewer = lab.cli("token", "create", "v", "--role", "viewer")
    history = lab.get("/api/v1/boards/sim-0001/history", viewer).json()["entries"]
    assert [(e["event"], e["source"], e["actor"]) for e in history[:2]] == [
        ("install_ok", "callback", "board:sim-0001"),
        ("second_stage_started", "callback", "board:sim-0001")]
    assert lab.get("/api/v1/boards/sim-0001", viewer).json()["state"] == "rebooting"


def test_database_outage_is_a_503(tmp_path):
    # A server whose database disappears under it answers 503, not 500.
    from tests.conftest import _migrate, create_pg_database, drop_pg_database, require_postgres

    require_postgres()
    url = _migrate(create_pg_database())
    lab = Lab(url, tmp_path)
    (tmp_path / "lab.yaml").write_text("boards:\n  - {name: b1}\n")
    lab.cli("board", "import", "lab.yaml")
    token = lab.cli("token", "create", "ops", "--role", "operator")
    lab.start()
    try:
        assert lab.post("/api/v1/boards/b1/events/maintenance", token).status_code == 200
        drop_pg_database(url)
        reply = lab.post("/api/v1/boards/b1/events/reboot", token)
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"] == "unavailable"
        assert lab.get("/readyz").status_code == 503
    finally:
        lab.stop()


def test_pools_over_http_and_the_cli(lab):
    admin = lab.cli("token", "create", "root", "--role", "admin")
    viewer = lab.cli("token", "create", "watcher", "--role", "viewer")
    p1, p2, p3 = (f"testbed-cert-pool-{i}-f1" for i in (1, 2, 3))
    assert lab.post("/api/v1/pool-fleets", viewer, json={"fabric": "f1", "count": 3}
                    ).status_code == 403
    assert lab.post("/api/v1/pool-fleets", admin, json={"fabric": "f1", "count": 3}
                    ).json() == [p1, p2, p3]
    os_version = "azurelinux3-test-x86_64-r11"
    reply = lab.post(f"/api/v1/pools/{p1}/override", admin,
                     json={"job_run_id": "j1", "os_version": os_version, "ttl_seconds": 600})
    assert reply.status_code == 200, reply.text
    assert (reply.json()["kind"], reply.json()["state"]) == ("pool", "overriding")
    taken = lab.post(f"/api/v1/pools/{p1}/override", admin,
                     json={"job_run_id": "j2", "os_version": os_version})
    assert (taken.status_code, taken.json()["message"]) == (409, f"pool '{p1}' is held by job j1")
    assert lab.post(f"/api/v1/pools/{p1}/override", admin, json={"job_run_id": "j1"}
                    ).status_code == 422
    assert lab.post("/api/v1/pools/ghost/override", admin,
                    json={"job_run_id": "j1", "os_version": os_version}).status_code == 404
    direct = lab.post(f"/api/v1/pools/{p1}/fire", admin, json={"event": "release"})
    assert direct.status_code == 409
    assert "cannot be fired directly" in direct.json()["message"]
    shown = lab.get(f"/api/v1/pools/{p1}", viewer).json()
    assert shown["vars"] == {"job_run_id": "j1", "os_version": os_version, "ttl_seconds": 600}
    assert [p["name"] for p in lab.get("/api/v1/pools", viewer,
                                       params={"state": "overriding"}).json()] == [p1]
    held = lab.post("/api/v1/pool-assignments", admin,
                    json={"job_run_id": "j2", "count": 2, "fabric": "f1"}).json()
    assert held == {"job_run_id": "j2", "pools": [p2, p3], "new": [p2, p3]}
    none_left = lab.post("/api/v1/pool-assignments", admin,
                         json={"job_run_id": "j3", "fabric": "f1"})
    assert none_left.status_code == 409

    def run(*args: str, remote: bool) -> subprocess.CompletedProcess:
        env = lab.env | ({"CORRAL_URL": lab.base, "CORRAL_TOKEN": admin} if remote else {})
        return subprocess.run([CORRAL, *args], env=env, cwd=lab.tmp, capture_output=True,
                              text=True, timeout=60)

    for args in (("pool", "list", "--json"), ("pool", "assignments", "--json"),
                 ("pool", "show", p1, "--json")):
        here, there = run(*args, remote=False), run(*args, remote=True)
        assert here.returncode == there.returncode == 0, there.stderr
        assert json.loads(here.stdout) == json.loads(there.stdout.replace("Z\"", "+00:00\""))
    for args in (("pool", "acquire", p1, "--job", "j9"),
                 ("pool", "override", p2, "--os-version", "v2", "--job", "j9"),
                 ("pool", "show", "ghost")):
        here, there = run(*args, remote=False), run(*args, remote=True)
        assert (here.returncode, here.stderr) == (there.returncode, there.stderr), args
    released = run("pool", "release", "--job", "j2", remote=True)
    assert released.stdout.strip() == f"released 2 pool(s) of j2: {p2}, {p3}"
    assert [a["pool"] for a in lab.get("/api/v1/pool-assignments", viewer).json()] == [p1]
    history = lab.get(f"/api/v1/pools/{p2}/history", viewer).json()["entries"]
    assert [(e["event"], e["actor"]) for e in history[:2]] == [("release", "root"),
                                                               ("assign", "root")]


def test_jobs_over_http_and_the_cli(lab):
    admin = lab.cli("token", "create", "pipeline", "--role", "admin")
    viewer = lab.cli("token", "create", "watcher", "--role", "viewer")
    lab.post("/api/v1/pool-fleets", admin, json={"fabric": "f1", "count": 1})
    spec = ("apiVersion: corral/v1\nkind: Job\njob_name: http job\npriority: high\n"
            "timeouts: {job: {hours: 1}, action: {minutes: 10}}\n"
            "stages: [{name: s, actions: [{name: w, waitForEventAction: {event: go}}]}]\n")
    assert lab.post("/api/v1/jobs", viewer, json={"spec": spec}).status_code == 403
    reply = lab.post("/api/v1/jobs", admin, json={"spec": spec})
    assert reply.json() == {"name": "job-1", "state": "queued"}
    bad = lab.post("/api/v1/jobs", admin, json={"spec": spec.replace("high", "urgent")})
    assert bad.status_code == 422
    assert "priority: must be high, medium, low or an integer 0-100" in bad.json()["message"]
    maize = lab.post("/api/v1/maize-snapshots", admin, params={"fabric": "f1"},
                     json={"snapshot": {"release": "azurelinux3-test-x86_64-r11"}})
    assert maize.json() == {"name": "job-2", "state": "queued"}
    shown = lab.get("/api/v1/jobs/job-1", viewer).json()
    assert (shown["job_name"], shown["priority"], shown["state"]) == ("http job", 100,
                                                                     "queued")
    stored = lab.get("/api/v1/jobs/job-1/spec", viewer).json()
    assert (stored["api_version"], stored["text"]) == ("corral/v1", spec)
    assert lab.post("/api/v1/jobs/job-1/signal", admin, json={"event": "go"}
                    ).status_code == 409
    assert lab.post("/api/v1/jobs/job-1/fire", admin, json={"event": "assign"}
                    ).status_code == 409
    assert lab.post("/api/v1/jobs/job-9/cancel", admin, json={}).status_code == 404
    canceled = lab.post("/api/v1/jobs/job-1/cancel", admin, json={"reason": "test"})
    assert (canceled.json()["from_state"], canceled.json()["state"]) == ("queued", "canceled")
    assert lab.post("/api/v1/jobs/job-1/cancel", admin, json={}).status_code == 409

    def run(*args: str, remote: bool) -> subprocess.CompletedProcess:
        env = lab.env | ({"CORRAL_URL": lab.base, "CORRAL_TOKEN": admin} if remote else {})
        return subprocess.run([CORRAL, *args], env=env, cwd=lab.tmp, capture_output=True,
                              text=True, timeout=60)

    (lab.tmp / "job.yaml").write_text(spec)
    (lab.tmp / "bad.yaml").write_text(spec.replace("{hours: 1}", "{hours: 1, minutes: 2}"))
    assert run("job", "submit", "job.yaml", remote=True).stdout.strip() == "job-3: queued"
    for args in (("job", "show", "job-2", "--json"), ("job", "list", "--json")):
        here, there = run(*args, remote=False), run(*args, remote=True)
        assert here.returncode == there.returncode == 0, there.stderr
        assert json.loads(here.stdout) == json.loads(there.stdout.replace("Z\"", "+00:00\""))
    for args in (("job", "submit", "bad.yaml"), ("job", "signal", "job-1", "go"),
                 ("job", "show", "job-9")):
        here, there = run(*args, remote=False), run(*args, remote=True)
        assert here.returncode == there.returncode != 0, args
    submitted = run("job", "submit", "bad.yaml", remote=False)
    assert submitted.returncode == 2
    assert submitted.stderr.splitlines() == [
        "error: invalid job spec:",
        "  timeouts.job: must have exactly one of days, hours, minutes, seconds, not 2"]


def test_several_api_processes_share_the_address_and_the_metrics(migrated_url, tmp_path):
    lab = Lab(migrated_url, tmp_path)
    lab.env = lab.env | {"CORRAL_HTTP_PROCESSES": "3"}
    (tmp_path / "lab.yaml").write_text("boards:\n  - {name: b1}\n")
    lab.cli("board", "import", "lab.yaml")
    lab.cli("board", "force-state", "b1", "maintenance", "--reason", "test set-up")
    token = lab.cli("board", "token", "b1")
    lab.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(subprocess.run(
                ["pgrep", "-P", str(lab.process.pid)], capture_output=True, text=True
        ).stdout.split()) < 2:
            time.sleep(0.2)
        # Give the extra processes time to listen; refused events count too.
        time.sleep(3)
        for _ in range(10):
            assert lab.post("/api/v1/boards/b1/events/install_ok", token).status_code == 409
        sent = 0
        # Each request on a new connection: the kernel spreads them over the processes.
        for _ in range(30):
            assert lab.post("/api/v1/boards/b1/events/install_ok", token).status_code == 409
            sent += 1
        families = {f.name: f for f in text_string_to_metric_families(
            lab.get("/metrics").text)}
        refused = sum(s.value for s in families["corral_events"].samples
                      if s.name == "corral_events_total" and s.labels["outcome"] == "refused")
        assert refused >= sent + 10
    finally:
        lab.stop()
    assert subprocess.run(["pgrep", "-P", str(lab.process.pid)],
                          capture_output=True).returncode == 1


def test_power_secrets_never_leave_over_the_cli_or_the_api(migrated_url, tmp_path):
    secret, community = "Inl1ne-BMC-pw-6d1", "c0mmunity-77b"
    (tmp_path / "lab.yaml").write_text(f"""boards:
  - name: srv-1
    power: {{driver: ipmi, address: 127.0.0.1, port: 9, username: admin, password: {secret}}}
  - name: pdu-1
    power: {{driver: snmp, pdu: raritan_px, address: 127.0.0.1, port: 9, outlet: 2,
            community: {community}, timeout: 0.5}}
""")
    lab = Lab(migrated_url, tmp_path)
    said = lab.cli("board", "import", "lab.yaml")
    lab.start()
    try:
        admin = lab.cli("token", "create", "ada", "--role", "admin")
        for name in ("srv-1", "pdu-1"):
            said += lab.cli("board", "show", name)
            said += lab.cli("board", "show", name, "--json")
            said += lab.cli("board", "history", name)
            said += subprocess.run([CORRAL, "--url", lab.base, "board", "show", name],
                                   env=lab.env | {"CORRAL_TOKEN": admin}, capture_output=True,
                                   text=True, timeout=60, check=True).stdout
            said += lab.get(f"/api/v1/boards/{name}", admin).text
            said += lab.get(f"/api/v1/boards/{name}/history", admin).text
        said += lab.cli("board", "list", "--json")
        said += lab.get("/api/v1/boards", admin).text
        document = lab.get("/api/v1/boards/srv-1", admin).json()
        assert document["attrs"]["power"]["password"] == "(hidden)"
        assert document["attrs"]["power"]["username"] == "admin"
    finally:
        lab.stop()
    said += (tmp_path / "serve.log").read_text()
    assert secret not in said
    assert community not in said
