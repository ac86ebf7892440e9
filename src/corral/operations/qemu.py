"""Power for QEMU boards, over QMP (the VM's machine protocol socket).

A board of ``corral lab`` (or any QEMU VM started with ``-qmp
unix:PATH,server=on,wait=off``) names its socket in the inventory::

    power: {driver: qemu, qmp: /var/lib/corral-lab/vm/lab-bios-1/qmp.sock}

``power_cycle`` resets the VM (``system_reset``): the firmware starts again
and follows its boot order, as a real board does after its relay cycles.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import Any

from corral.operations.base import OperationContext, OperationFailed

MAX_REPLY = 1 << 20


class QemuPower:
    """Implements ``PowerDriver`` for QEMU VMs. A missing or refused socket
    (the VM is not running) is a definite failure; a slow one is retried."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self.timeout = timeout

    def cycle(self, ctx: OperationContext) -> Mapping[str, Any]:
        path = ctx.attrs.get("power_qmp")
        if not isinstance(path, str) or not path:
            raise OperationFailed(f"board {ctx.name} has power driver qemu but no power.qmp "
                                  "(the VM's QMP socket)")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(path)
                stream = sock.makefile("rwb")
                _reply(stream, "the greeting", greeting=True)
                _command(stream, "qmp_capabilities")
                _command(stream, "system_reset")
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise OperationFailed(f"the VM of board {ctx.name} is not running (QMP socket "
                                  f"{path}: {exc.strerror})") from None
        return {"driver": "qemu", "action": "system_reset"}


def _command(stream: Any, name: str) -> None:
    stream.write(json.dumps({"execute": name}).encode() + b"\n")
    stream.flush()
    _reply(stream, name)


def _reply(stream: Any, what: str, *, greeting: bool = False) -> None:
    """Read QMP lines until the answer to ``what`` (events in between are skipped).

    Raises:
        OperationFailed: QEMU answered with an error.
        ConnectionError: the socket closed or sent something that is not QMP.
    """
    while True:
        line = stream.readline(MAX_REPLY)
        if not line:
            raise ConnectionError(f"QMP closed the connection before answering {what}")
        try:
            message = json.loads(line)
        except ValueError:
            raise ConnectionError(f"QMP sent a line that is not JSON ({line[:80]!r})") from None
        if greeting and "QMP" in message:
            return
        if "error" in message:
            error = message["error"]
            raise OperationFailed(f"QMP refused {what}: {error.get('desc', error)}")
        if "return" in message:
            return
