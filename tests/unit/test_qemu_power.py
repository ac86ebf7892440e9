"""The qemu power driver speaks QMP to a socket; the dispatch picks a driver
by the inventory's power.driver. (Against a real VM: tests/lab.)"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from corral.operations.base import OperationContext, OperationFailed, PowerByDriver
from corral.operations.qemu import QemuPower


def _ctx(**attrs) -> OperationContext:
    return OperationContext(operation_id=1, kind="power_cycle", machine_kind="board",
                            name="b1", attrs=attrs, payload={}, attempt=1)


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
    received = _qmp_server(sock, [{"return": {}}, {"return": {}}])
    assert QemuPower().cycle(_ctx(power_qmp=str(sock))) == {"driver": "qemu",
                                                            "action": "system_reset"}
    assert [m["execute"] for m in received] == ["qmp_capabilities", "system_reset"]


def test_qemu_refusing_is_a_definite_failure(tmp_path):
    sock = tmp_path / "qmp.sock"
    _qmp_server(sock, [{"return": {}}, {"error": {"class": "GenericError", "desc": "no"}}])
    with pytest.raises(OperationFailed, match="QMP refused system_reset: no"):
        QemuPower().cycle(_ctx(power_qmp=str(sock)))


def test_a_vm_that_is_not_running_fails_saying_so(tmp_path):
    with pytest.raises(OperationFailed, match="is not running"):
        QemuPower().cycle(_ctx(power_qmp=str(tmp_path / "gone.sock")))
    with pytest.raises(OperationFailed, match=r"no power\.qmp"):
        QemuPower().cycle(_ctx())


class Recorder:
    def __init__(self) -> None:
        self.names: list[str] = []

    def cycle(self, ctx: OperationContext) -> dict:
        self.names.append(ctx.name)
        return {"by": "recorder"}


def test_the_inventory_chooses_the_driver():
    default, qemu = Recorder(), Recorder()
    power = PowerByDriver(default, {"qemu": qemu})
    power.cycle(_ctx())
    power.cycle(_ctx(power_driver="qemu"))
    assert (default.names, qemu.names) == (["b1"], ["b1"])
    with pytest.raises(OperationFailed, match="names power driver 'redfishh'; drivers: qemu"):
        power.cycle(_ctx(power_driver="redfishh"))
