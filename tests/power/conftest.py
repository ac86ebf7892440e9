"""Real BMC and PDU emulators for the power drivers' tests: sushy-emulator
(Redfish, its fake driver), OpenIPMI's ipmi_sim (IPMI LAN, with a chassis
control script whose files are the chassis) and snmpsim (an APC rack PDU
whose outlets are writable).

Each test starts its own emulator on a free loopback port and stops it. The
tests are marked ``power`` and ``slow``; where an emulator is missing they
skip, and under ``CORRAL_REQUIRE_LAB=1`` (CI installs them) they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.operations.base import OperationContext
from tests.processes import stop

HERE = Path(__file__).parent
REQUIRE = os.environ.get("CORRAL_REQUIRE_LAB") == "1"
BIN = Path(sys.executable).parent
PASSWORD = "Bmc-s3cret-7f2a"
COMMUNITY = "pdu-c0mmunity-91"
APC_OUTLET = "1.3.6.1.4.1.318.1.1.12.3.3.1.1.4"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.power)


def need(program: str, package: str) -> str:
    found = shutil.which(program) or (str(BIN / program) if (BIN / program).exists() else None)
    if found is None:
        reason = f"{program} is not installed ({package})"
        if REQUIRE:
            pytest.fail(f"CORRAL_REQUIRE_LAB=1 but {reason}")
        pytest.skip(reason)
    return found


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ctx(name: str, power: dict, *, kind: str = "power_cycle", operation_id: int = 1,
        payload: dict | None = None) -> OperationContext:
    return OperationContext(operation_id=operation_id, kind=kind, machine_kind="board",
                            name=name, attrs={"power": power}, payload=payload or {},
                            attempt=1)


def _wait_tcp(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"emulator exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"emulator did not listen on {port}: {log.read_text()[-2000:]}")


@contextmanager
def silent_listener(kind: int) -> Iterator[int]:
    """A port that takes requests and never answers: a controller slower than
    any timeout."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        yield int(sock.getsockname()[1])


# ----------------------------------------------------------------- Redfish

@dataclass
class Redfish:
    url: str
    log: Path

    def system(self, system_id: str) -> dict:
        import httpx

        answer = httpx.get(f"{self.url}/redfish/v1/Systems/{system_id}",
                           auth=("admin", PASSWORD), timeout=10)
        answer.raise_for_status()
        return dict(answer.json())


@pytest.fixture
def redfish(tmp_path: Path) -> Iterator[Redfish]:
    program = need("sushy-emulator", "PyPI sushy-tools")
    import bcrypt

    (tmp_path / "htpasswd").write_text(
        "admin:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode() + "\n")
    systems = [{"uuid": f"sys-{n}", "name": f"rf-{n}", "power_state": "Off",
                "nics": [{"mac": f"52:54:00:00:0f:0{n}", "ip": f"10.0.0.{n}"}]}
               for n in range(1, 4)]
    (tmp_path / "emulator.conf").write_text(
        "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
        # Its own state: the fake driver keeps systems in a file that
        # otherwise outlives the emulator.
        f"SUSHY_EMULATOR_STATE_DIR = {str(tmp_path / 'sushy-state')!r}\n"
        f"SUSHY_EMULATOR_AUTH_FILE = {str(tmp_path / 'htpasswd')!r}\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n")
    port = free_port()
    log = tmp_path / "sushy.log"
    with log.open("w") as out:
        process = subprocess.Popen([program, "--config", str(tmp_path / "emulator.conf"),
                                    "--interface", "127.0.0.1", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_tcp(port, process, log)
        yield Redfish(url=f"http://127.0.0.1:{port}", log=log)
    finally:
        stop(process)


# ----------------------------------------------------------------- IPMI

CHASSIS = """#!/bin/sh
# ipmi_sim's chassis control: the chassis is the files in $1.
dir=$1; shift; shift; op=$1; shift
echo "$(date +%s.%N) $op $*" >> "$dir/commands"
if [ "$op" = get ]; then
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)";;
      boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)";;
    esac
  done
else
  while [ $# -ge 2 ]; do
    case $1 in
      power) echo "$2" > "$dir/power";;
      boot) echo "$2" > "$dir/boot";;
    esac
    shift 2
  done
fi
"""


@dataclass
class Ipmi:
    port: int
    chassis: Path

    def power(self) -> str:
        return (self.chassis / "power").read_text().strip() if (
            self.chassis / "power").exists() else "0"

    def commands(self) -> list[str]:
        path = self.chassis / "commands"
        return path.read_text().splitlines() if path.exists() else []


def ipmi_sim_config(tmp_path: Path, *, port: int, chassis: Path, extra: str = "") -> Path:
    """lan.conf for one BMC at 127.0.0.1:port, user admin with PASSWORD."""
    chassis.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "chassis.sh"
    script.write_text(CHASSIS)
    script.chmod(0o755)
    (tmp_path / "bmc.emu").write_text(
        "mc_setbmc 0x20\n"
        "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
        "mc_enable 0x20\n")
    config = tmp_path / "lan.conf"
    config.write_text(f"""name "corral-bmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script} {chassis} 0x20"
{extra}
  user 2 true  "admin" "{PASSWORD}" admin 10 none md2 md5 straight
""")
    return config


@pytest.fixture
def ipmi(tmp_path: Path) -> Iterator[Ipmi]:
    program = need("ipmi_sim", "Debian openipmi")
    need("ipmitool", "Debian ipmitool")
    port = free_port(socket.SOCK_DGRAM)
    chassis = tmp_path / "chassis"
    config = ipmi_sim_config(tmp_path, port=port, chassis=chassis)
    log = tmp_path / "ipmi_sim.log"
    with log.open("w") as out:
        process = subprocess.Popen([program, "-c", str(config), "-f", str(tmp_path / "bmc.emu"),
                                    "-n", "-s", str(tmp_path / "state")],
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        if process.poll() is not None:
            raise RuntimeError(f"ipmi_sim exited: {log.read_text()[-2000:]}")
        yield Ipmi(port=port, chassis=chassis)
    finally:
        stop(process)


# ----------------------------------------------------------------- SNMP

@dataclass
class Pdu:
    port: int
    outlets: int

    def outlet(self, number: int) -> int:
        """The outlet's state as the PDU itself answers (net-snmp's snmpget)."""
        done = subprocess.run(["snmpget", "-v2c", "-c", COMMUNITY, "-Oqv",
                               f"127.0.0.1:{self.port}", f"{APC_OUTLET}.{number}"],
                              capture_output=True, text=True, timeout=10, check=True)
        return int(done.stdout.strip())


def start_pdu(tmp_path: Path, *, outlets: int = 12) -> tuple[subprocess.Popen, Pdu]:
    program = need("snmpsim-command-responder", "PyPI snmpsim")
    need("snmpget", "Debian snmp")
    data = tmp_path / "snmp-data"
    data.mkdir()
    # The community is the data file's name; writecache keeps what is set.
    records = ["1.3.6.1.2.1.1.1.0|4|APC Web/SNMP Management Card (simulated)",
               "1.3.6.1.2.1.1.2.0|6|1.3.6.1.4.1.318.1.3.4.5"]
    records += [f"{APC_OUTLET}.{n}|2:writecache|value=1" for n in range(1, outlets + 1)]
    (data / f"{COMMUNITY}.snmprec").write_text("\n".join(records) + "\n")
    cache = tmp_path / "snmp-cache"
    cache.mkdir()
    port = free_port(socket.SOCK_DGRAM)
    log = tmp_path / "snmpsim.log"
    user = "root" if os.geteuid() == 0 else str(os.getuid())
    with log.open("w") as out:
        process = subprocess.Popen(
            [program, f"--data-dir={data}", f"--cache-dir={cache}",
             f"--agent-udpv4-endpoint=127.0.0.1:{port}",
             *([f"--process-user={user}", f"--process-group={user}"] if user == "root" else []),
             "--v3-user=corral", "--v3-auth-key=auth-k3y-123", "--v3-priv-key=priv-k3y-456",
             "--v3-auth-proto=SHA", "--v3-priv-proto=AES"],
            stdout=out, stderr=subprocess.STDOUT)
    pdu = Pdu(port=port, outlets=outlets)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"snmpsim exited: {log.read_text()[-2000:]}")
        try:
            pdu.outlet(1)
            return process, pdu
        except subprocess.CalledProcessError:
            time.sleep(0.3)
    stop(process)
    raise RuntimeError(f"snmpsim did not answer: {log.read_text()[-2000:]}")


@pytest.fixture
def pdu(tmp_path: Path) -> Iterator[Pdu]:
    process, found = start_pdu(tmp_path)
    try:
        yield found
    finally:
        stop(process)
