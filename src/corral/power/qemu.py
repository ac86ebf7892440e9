"""Power for QEMU boards, over QMP (the VM's machine protocol socket).

A board of ``corral lab`` (or any QEMU VM started with ``-qmp
unix:PATH,server=on,wait=off``) names its socket in the inventory::

    power: {driver: qemu, qmp: /var/lib/corral-lab/vm/lab-bios-1/qmp.sock}

``power_cycle`` resets the VM (``system_reset``, then ``cont`` in case it was
paused): the firmware starts again and follows its boot order, as a real
board does after its relay cycles.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from corral.power.base import OFF, ON, PowerFailed, PowerTarget, PowerUnavailable
from corral.power.settings import PowerSettings, timeout_of

MAX_REPLY = 1 << 20


class QemuSettings(PowerSettings):
    driver: Literal["qemu"]
    qmp: str


class QemuDriver:
    """Implements ``PowerDriver`` for QEMU VMs. A missing or refused socket
    (the VM is not running) is a definite failure; a slow one is retried.
    Power off pauses the VM (``stop``) and power on resets and resumes it:
    the VM process, its QMP socket and its console stay, as a board's BMC
    stays when its host is off."""

    Settings: ClassVar[type[PowerSettings]] = QemuSettings
    reports_state: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()

    def power_cycle(self, target: PowerTarget) -> Mapping[str, Any]:
        self._execute(target, "system_reset", "cont")
        return {"asked": "system_reset"}

    def power_on(self, target: PowerTarget) -> Mapping[str, Any]:
        self._execute(target, "system_reset", "cont")
        return {"asked": "system_reset, cont"}

    def power_off(self, target: PowerTarget) -> Mapping[str, Any]:
        self._execute(target, "stop")
        return {"asked": "stop"}

    def power_state(self, target: PowerTarget) -> str:
        status = self._execute(target, "query-status")
        running = isinstance(status, dict) and status.get("running")
        return ON if running else OFF

    def set_boot_device(self, target: PowerTarget, device: str, *, persistent: bool) -> None:
        # A lab VM boots the network first; what it boots is the netboot
        # configuration's choice (boot_local), as with pxelinux boards.
        return None

    def _execute(self, target: PowerTarget, *commands: str) -> Any:
        path = target.settings.get("qmp")
        timeout = timeout_of(target.settings)
        answer: Any = None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(path))
                stream = sock.makefile("rwb")
                _reply(stream, "the greeting", greeting=True)
                _command(stream, "qmp_capabilities")
                for name in commands:
                    answer = _command(stream, name)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise PowerFailed(f"the VM of board {target.name} is not running (QMP socket "
                              f"{path}: {exc.strerror})") from None
        except (TimeoutError, ConnectionError) as exc:
            raise PowerUnavailable(f"QMP socket {path} of board {target.name}: {exc}") from None
        return answer


def _command(stream: Any, name: str) -> Any:
    stream.write(json.dumps({"execute": name}).encode() + b"\n")
    stream.flush()
    return _reply(stream, name)


def _reply(stream: Any, what: str, *, greeting: bool = False) -> Any:
    """Read QMP lines until the answer to ``what`` (events in between are skipped).

    Raises:
        PowerFailed: QEMU answered with an error.
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
            return None
        if "error" in message:
            error = message["error"]
            raise PowerFailed(f"QMP refused {what}: {error.get('desc', error)}")
        if "return" in message:
            return message["return"]
