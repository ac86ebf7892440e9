"""`make run`'s simulated test runs as a user starts them: `corral serve
--simulate`, `corral simulate boards` and `corral simulate runs` as processes
on examples/simlab.yaml. What the runs did is read back from the API: leases
of both owners granted, holders' reboots in the boards' history, a lease
ended by a lost heartbeat, and, once the runs are stopped with Ctrl-C,
nothing left held or waiting."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from corral.client import ENDED as ENDED_OR_RETURNING
from corral.leases.model import ENDED
from corral.store import open_store
from corral.tokens import TokenStore
from tests.acceptance.test_http import free_port
from tests.processes import stop

ROOT = Path(__file__).resolve().parents[2]
CORRAL = str(Path(sys.executable).with_name("corral"))
BOARDS = [f"sim-{i:04d}" for i in range(1, 21)]
HOLDER_ACTOR = re.compile(r"^(alice|bob) \(lease-\d+\)$")


def wait_for(predicate: Any, *, what: str, limit: float = 240.0) -> Any:
    """Poll ``predicate`` until it holds. ``limit`` only keeps a broken run
    from hanging the suite; nothing here measures speed."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


class Api:
    """The server's API as a viewer; an answer other than 200 fails the test
    with the server's log."""

    def __init__(self, base: str, token: str, log: Path) -> None:
        self.http = httpx.Client(base_url=base, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
        self.log = log

    def get(self, path: str, **params: Any) -> Any:
        reply = self.http.get(path, params=params)
        if reply.status_code != 200:
            errors = [line for line in self.log.read_text().splitlines()
                      if '"level": "error"' in line]
            raise AssertionError(f"GET {path}: {reply.status_code} {reply.text}\n"
                                 + "\n".join(errors[-5:]))
        return reply.json()

    def leases(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/leases", limit=5000)  # type: ignore[no-any-return]

    def lease(self, name: str) -> dict[str, Any]:
        return self.get(f"/api/v1/leases/{name}")  # type: ignore[no-any-return]

    def holder_events(self) -> list[dict[str, Any]]:
        """Every event a lease's holder fired at a board (from the boards' history)."""
        fired = []
        for board in BOARDS:
            history = self.get(f"/api/v1/boards/{board}/history", limit=1000)
            fired += [e for e in history["entries"]
                      if e["actor"] and HOLDER_ACTOR.match(e["actor"])]
        return fired


def test_simulated_runs_lease_lose_heartbeats_and_give_everything_back(tmp_path):
    env = os.environ | {
        "CORRAL_DATABASE_URL": f"sqlite:///{tmp_path / 'corral.db'}",
        "CORRAL_LOG_FORMAT": "json", "CORRAL_LOG_LEVEL": "warning",
        # The simulated lab of `make run`, faster and without random failures,
        # so that boards come back from their return path in a few seconds.
        "CORRAL_TIMEOUT_SCALE": "0.05", "CORRAL_SIM_OPERATION_SECONDS": "0",
        "CORRAL_SIM_POWER_CYCLE_FAILURE": "0", "CORRAL_SIM_PING_FAILURE": "0",
        "CORRAL_SIM_POLL_FAILURE": "0", "CORRAL_SIM_BOOT_SECONDS": "0",
        "CORRAL_SIM_INSTALL_SECONDS": "0", "CORRAL_SIM_INSTALL_FAILURE": "0",
        "CORRAL_SIM_REIMAGE_RATE": "0", "CORRAL_LEASE_INTERVAL": "0.5",
    }
    env.pop("CORRAL_CONFIG", None)

    def corral(*args: str) -> str:
        result = subprocess.run([CORRAL, *args], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    corral("db", "upgrade")
    corral("board", "import", str(ROOT / "examples" / "simlab.yaml"))
    api_token = corral("token", "create", "checker", "--role", "viewer")
    base = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    processes: list[subprocess.Popen] = []
    runs: subprocess.Popen | None = None
    with log.open("a") as out:
        server = subprocess.Popen([CORRAL, "serve", "--simulate", "--listen",
                                   base.removeprefix("http://")],
                                  cwd=tmp_path, env=env, stdout=out, stderr=out)
        processes.append(server)
        processes.append(subprocess.Popen(
            [CORRAL, "simulate", "boards", "--count", "20", "--url", base],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=out))
    api = Api(base, api_token, log)
    try:
        wait_for(lambda: _healthy(base, server, log), what="the server")
        # A lease an earlier simulator left open (its server stopped first).
        # (`corral token create` offers no user role: issued on the database.)
        store = open_store(env["CORRAL_DATABASE_URL"])
        alice = TokenStore(store).issue("alice", "user")
        store.dispose()
        left = httpx.post(f"{base}/api/v1/leases", headers={"Authorization": f"Bearer {alice}"},
                          json={"selector": "rack=r1", "count": 1, "duration": 600},
                          timeout=30)
        assert left.status_code == 201, left.text
        # Half the runs forget to heartbeat, a fifth walk away: both endings
        # come early, whatever the seed draws.
        runs = subprocess.Popen(
            [CORRAL, "simulate", "runs", "--owners", "alice,bob", "--parallel", "4",
             "--forget-rate", "0.5", "--abandon-rate", "0.2", "--seed", "3", "--url", base],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def granted_and_lost() -> bool:
            leases = api.leases()
            owners = {x["owner"] for x in leases if x["activated_at"] is not None}
            lost = [x for x in leases if x["ended_by"] == "heartbeat"]
            return owners == {"alice", "bob"} and bool(lost)

        wait_for(granted_and_lost, what="leases of both owners, one lost by its heartbeat")
        wait_for(api.holder_events, what="a holder's event at a board")

        runs.send_signal(signal.SIGINT)
        out, err = runs.communicate(timeout=120)
        assert runs.returncode == 0, err
        tally = dict(line.split(": ", 1) for line in out.splitlines())
        assert set(tally) == {"alice", "bob"}, out
        assert "heartbeat_lost=" in tally["alice"] + tally["bob"], out
        assert "released_leftover=1" in tally["alice"], out
        assert api.lease(left.json()["id"])["ended_by"] in ("released", "cancelled")

        # Stopped: every lease the runs asked for was released or had ended
        # before the process exited; none is waiting, preparing or active.
        leases = api.leases()
        assert leases
        still_open = [(x["id"], x["state"]) for x in leases
                      if x["state"] not in ENDED_OR_RETURNING]
        assert not still_open, still_open

        fired = api.holder_events()
        assert {e["event"] for e in fired} == {"reboot"}
        assert {(e["from_state"], e["to_state"]) for e in fired} == {("leased", "power_cycling")}

        # Their boards come home, and every lease takes its final state.
        wait_for(lambda: all(x["state"] in ENDED for x in api.leases()),
                 what="every lease to end")
        final = api.leases()
        lost = [x for x in final if x["ended_by"] == "heartbeat"]
        assert lost
        assert {x["state"] for x in lost} == {"expired"}
        assert {x["owner"] for x in final if x["activated_at"]} == {"alice", "bob"}
        assert all(x["boards"] for x in final if x["activated_at"])
        assert not any(x["state"] == "failed" for x in final)
    finally:
        api.http.close()
        if runs is not None and runs.poll() is None:
            runs.kill()
            runs.communicate(timeout=30)
        for process in reversed(processes):
            stop(process, log=log)


def _healthy(base: str, server: subprocess.Popen, log: Path) -> bool:
    if server.poll() is not None:
        raise AssertionError(f"the server exited:\n{log.read_text()[-4000:]}")
    try:
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
