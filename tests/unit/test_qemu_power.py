"""The qemu power driver speaks QMP to a socket; the power operations pick a
driver by the inventory's power.driver. (Against a real VM: tests/lab.)"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from corral.operations.base import OperationContext, OperationFailed
from corral.power.base import UNKNOWN, PowerTarget
from corral.power.drivers import SimulatedSettings
from corral.power.qemu import QemuDriver
from corral.power.service import PowerOperations
from corral.power.settings import secret_reader


def _ctx(**attrs) -> OperationContext:
    return OperationContext(operation_id=1, kind="power_cycle", machine_kind="board",
                            name="b1", attrs=attrs, payload={}, attempt=1)


def _target(**settings) -> PowerTarget:
    return PowerTarget(ctx=_ctx(power=settings), settings=settings,
                       secret=secret_reader("b1", settings))


def _qmp_server(path: Path, replies: list[dict]) -> list[dict]:
    """A QMP peer: greets, then answers each command with the next reply."""
    received: list[dict] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            stream.flush()
            for reply in replies:
                line = stream.readline()
                if not line:
                    return
                received.append(json.loads(line))
                stream.write(b'{"event": "RESET", "data": {}}\n')
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return received


def test_a_reset_over_qmp(tmp_path):
    sock = tmp_path / "qmp.sock"
    received = _qmp_server(sock, [{"return": {}}, {"return": {}}, {"return": {}}])
    assert QemuDriver().power_cycle(_target(qmp=str(sock))) == {"asked": "system_reset"}
    assert [m["execute"] for m in received] == ["qmp_capabilities", "system_reset", "cont"]


def test_the_power_state_is_whether_the_vm_runs(tmp_path):
    sock = tmp_path / "qmp.sock"
    _qmp_server(sock, [{"return": {}}, {"return": {"running": False, "status": "paused"}}])
    assert QemuDriver().power_state(_target(qmp=str(sock))) == "off"


def test_qemu_refusing_is_a_definite_failure(tmp_path):
    sock = tmp_path / "qmp.sock"
    _qmp_server(sock, [{"return": {}}, {"error": {"class": "GenericError", "desc": "no"}}])
    with pytest.raises(OperationFailed, match="QMP refused system_reset: no"):
        QemuDriver().power_cycle(_target(qmp=str(sock)))


def test_a_vm_that_is_not_running_fails_saying_so(tmp_path):
    with pytest.raises(OperationFailed, match="is not running"):
        QemuDriver().power_cycle(_target(qmp=str(tmp_path / "gone.sock")))


class Recorder:
    Settings = SimulatedSettings
    reports_state = False

    def __init__(self) -> None:
        self.names: list[str] = []

    def power_cycle(self, target: PowerTarget) -> dict:
        self.names.append(target.name)
        return {"by": "recorder"}

    def power_state(self, target: PowerTarget) -> str:
        return UNKNOWN


def test_the_inventory_chooses_the_driver():
    default, qemu = Recorder(), Recorder()
    power = PowerOperations({"simulated": default, "qemu": qemu}, default="simulated")
    assert power.power_cycle(_ctx())["driver"] == "simulated"
    assert power.power_cycle(_ctx(power={"driver": "qemu"}))["by"] == "recorder"
    assert (default.names, qemu.names) == (["b1"], ["b1"])
    with pytest.raises(OperationFailed, match="names power driver 'redfishh', which this "
                       "engine does not have"):
        power.power_cycle(_ctx(power={"driver": "redfishh"}))
