"""IPMI Serial-over-LAN capture against OpenIPMI's ipmi_sim, whose SOL
interface is wired to a TCP console server on loopback (its ``sol
"tcp:HOST:PORT"`` device): what the board's serial line says reaches the
console store through ``ipmitool sol activate``, the password never on
ipmitool's command line and never in what is stored."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from corral import console
from corral.console.capture import CaptureSettings, ConsoleCapture
from corral.engine.core import Engine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from tests.console_server import ConsoleServer
from tests.power.conftest import PASSWORD, free_port, ipmi_sim_config, need
from tests.processes import stop


def _eventually(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_sol_output_is_captured_and_the_password_stays_hidden(tmp_path: Path):
    program = need("ipmi_sim", "Debian openipmi")
    need("ipmitool", "Debian ipmitool")
    serial = ConsoleServer()
    port = free_port(socket.SOCK_DGRAM)
    config = ipmi_sim_config(tmp_path, port=port, chassis=tmp_path / "chassis",
                             extra=f'  sol "tcp:127.0.0.1:{serial.port}" 115200\n')
    log = tmp_path / "ipmi_sim.log"
    with log.open("w") as out:
        bmc = subprocess.Popen([program, "-c", str(config), "-f", str(tmp_path / "bmc.emu"),
                                "-n", "-s", str(tmp_path / "state")],
                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    store = open_store(f"sqlite:///{tmp_path / 'corral.db'}")
    store.upgrade()
    engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
    engine.create("board", "srv-1", attrs={
        "power": {"driver": "ipmi", "address": "127.0.0.1", "port": port,
                  "username": "admin", "password": PASSWORD},
        "console": {"type": "ipmi"}})
    capture = ConsoleCapture(store, engine.clock, owner="p1", settings=CaptureSettings(),
                             reopen_seconds=0.5)
    try:
        # ipmi_sim connects to the serial line once it is up.
        assert _eventually(lambda: serial.connections >= 1), log.read_text()[-2000:]
        assert capture.run_pass() == ["srv-1"]
        reader = capture.readers["srv-1"]
        process = _eventually(lambda: getattr(reader.source, "process", None))
        assert process is not None
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"sol" in argv
        assert b"activate" in argv
        assert PASSWORD.encode() not in b" ".join(argv)

        def said() -> str:
            serial.say(f"GRUB loading.\r\nroot password is {PASSWORD}\r\nsrv-1 login: ")
            try:
                return console.read(store, "srv-1").text
            except Exception:
                return ""

        text = _eventually(lambda: "login:" in said() and said())
        assert "GRUB loading." in text
        assert PASSWORD not in text
        assert "root password is (hidden)" in text
        assert "SOL Session operational" not in text
        assert "tcgetattr" not in text
    finally:
        capture.shutdown()
        stop(bmc)
        serial.close()
        store.dispose()
