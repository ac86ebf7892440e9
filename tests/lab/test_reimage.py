"""Corral reimages real (virtual) boards end to end: a SeaBIOS board through
QEMU's iPXE ROM and pxelinux, an OVMF board through GRUB, and a SeaBIOS board
whose iPXE ROM runs the script Corral serves over HTTP, each netbooting the
configuration Corral wrote, running the reference second stage, which writes
the image to the board's disk and reports with the reimage token, then
rebooting into the installed system, which the ping finds on the network.

Nothing is simulated: power is IPMI (lab-bios-1's BMC is OpenIPMI's ipmi_sim,
which runs its VM) or QMP, TFTP and DHCP are QEMU's, the ping is an
HTTP request to the installed system, the callbacks cross the network."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from corral.bootres.netboot import mac_file
from corral.lab import Lab

CORRAL = str(Path(sys.executable).with_name("corral"))
# A reimaged board is health-checked (the lab's definition: a power cycle
# over its own driver, a ping, a poll) before it is ready again.
REIMAGE_PATH = ["reimage", "write_pxe_config_ok", "set_boot_device_ok", "power_cycle_ok",
                "second_stage_started", "install_ok", "boot_local_ok", "timeout", "ping_ok",
                "admit", "health_check_ok", "check_passed"]
STATES = ["pxe_configuring", "pxe_boot_device", "pxe_power_cycling", "pxe_booting",
          "installing", "rebooting", "rebooting", "pinging", "check_queued", "checking",
          "judging", "ready"]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Corral:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str) -> str:
        result = subprocess.run([CORRAL, *args], env=self.env, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, f"corral {' '.join(args)}: {result.stderr}"
        return result.stdout

    def board(self, name: str) -> dict:
        return json.loads(self("board", "show", name, "--json"))

    def history(self, name: str) -> list[dict]:
        return list(reversed(json.loads(self("board", "history", name, "--json",
                                             "--limit", "200"))))

    def wait(self, names: list[str], state: str, *, since: int, seconds: float) -> None:
        """Until every board has reached ``state`` after its history entry ``since``
        (failing early on a failed state)."""
        deadline = time.monotonic() + seconds
        pending = set(names)
        while pending:
            for name in sorted(pending):
                doc = self.board(name)
                entries = [e for e in self.history(name) if e["id"] > since]
                assert not doc["failed"], (name, doc["state"], entries[-6:])
                if any(e["to_state"] == state for e in entries):
                    pending.discard(name)
            assert time.monotonic() < deadline, f"{sorted(pending)} never reached {state}"
            time.sleep(2)


@pytest.fixture
def lab(lab_host, tmp_path):
    lab = Lab(tmp_path / "lab", boards=3)  # accel auto: KVM only where the probe says so
    lab.build()
    http_port = _port()
    lab.start(http_port)
    assert lab.accel in ("kvm", "tcg")
    print(f"lab boards run under {lab.accel}")
    env = {**os.environ, "CORRAL_DATABASE_URL": f"sqlite:///{tmp_path}/corral.db",
           "CORRAL_OPERATION_INTERVAL": "0.2", "CORRAL_LOG_FORMAT": "json",
           **lab.settings(http_port)}
    env.pop("CORRAL_URL", None)
    corral = Corral(env)
    corral("db", "upgrade")
    corral("bootres", "import", "--config", str(lab.directory / "import.yaml"))
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen([CORRAL, "serve", "--listen", f"127.0.0.1:{http_port}"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield lab, corral, http_port
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        lab.stop()
        for board in lab.boards:
            # The consoles tell what the firmware and the second stage did.
            print(f"--- {board.name} console (tail) ---")
            console = board.console.read_text(errors="replace")[-3000:]
            print(re.sub(r"corral\.token=\S+", "corral.token=<hidden>", console))
        print((tmp_path / "serve.log").read_text(errors="replace")[-5000:])


@pytest.mark.timeout(900)
def test_bios_uefi_and_ipxe_boards_are_reimaged_for_real(lab):
    lab, corral, http_port = lab
    names = [b.name for b in lab.boards]
    assert [b.firmware for b in lab.boards] == ["bios", "uefi", "ipxe"]
    corral("board", "import", str(lab.inventory))
    # Imported: health-checked (power cycled over IPMI or QMP, booted from the
    # disk they came with, pinged, polled), all three at once.
    corral.wait(names, "ready", since=0, seconds=600)
    for name in names:
        enrolled = [(e["event"], e["to_state"]) for e in corral.history(name)][:5]
        assert enrolled == [("create", "new"), ("timeout", "check_queued"),
                            ("admit", "checking"), ("health_check_ok", "judging"),
                            ("check_passed", "ready")], (name, enrolled)
    for board in lab.boards:
        banner = httpx.get(f"http://127.0.0.1:{board.port}/", timeout=5).text
        assert banner.split() == ["corral-installed", board.mac, "preinstalled"]
    marks = {name: corral.history(name)[-1]["id"] for name in names}
    for name in names:
        corral("board", "event", name, "reimage", "--reason", "lab test")
    corral.wait(names, "ready", since=max(marks.values()), seconds=600)

    for board in lab.boards:
        history = [e for e in corral.history(board.name) if e["id"] > marks[board.name]]
        # Every step, in order, with nothing simulated in between (a poll of the
        # ready board may follow).
        steps = [(e["event"], e["to_state"]) for e in history][:len(REIMAGE_PATH)]
        assert steps == list(zip(REIMAGE_PATH, STATES, strict=True)), (board.name, history)
        callbacks = [e for e in history if e["source"] == "callback"]
        assert [(e["event"], e["actor"]) for e in callbacks] == [
            ("second_stage_started", f"reimage:{board.name}"),
            ("install_ok", f"reimage:{board.name}")]
        assert history[5]["payload"] == {"disk": "/dev/vda"}
        # lab-bios-1's BMC is ipmi_sim running its VM: the cycle went over IPMI.
        cycled = history[3]["payload"]
        if board.ipmi_port:
            assert (cycled["driver"], cycled["asked"], cycled["state"]) == (
                "ipmi", "chassis power cycle", "on")
        else:
            assert (cycled["driver"], cycled["asked"]) == ("qemu", "system_reset")
        # The installed system is the reimage's image, not the one the board had.
        banner = httpx.get(f"http://127.0.0.1:{board.port}/", timeout=5).text
        assert banner.split() == ["corral-installed", board.mac, "lab"]
        # Its netboot configurations boot the local disk.
        name = mac_file(board.mac)
        assert "LOCALBOOT 0" in (lab.tftp / "pxelinux.cfg" / name).read_text()
        assert 'chainloader "$corral_loader"' in (
            lab.tftp / "grub" / f"grub.cfg-{name}").read_text()
        script = httpx.get(f"http://127.0.0.1:{http_port}/boot/ipxe/{board.mac}", timeout=5)
        assert script.text.splitlines()[-1] == "exit"
        # The reimage token the board booted with (the kernel logs its command
        # line) is refused now.
        console = board.console.read_text(errors="replace")
        tokens = re.findall(r"corral\.token=(corral_\d+_[A-Za-z0-9_-]+)", console)
        assert tokens, f"{board.name}: no reimage token on the console"
        refused = httpx.post(f"http://127.0.0.1:{http_port}/api/v1/boards/{board.name}"
                             "/events/install_ok", json={},
                             headers={"Authorization": f"Bearer {tokens[-1]}"}, timeout=10)
        assert refused.status_code == 401
        # Corral captured the same console, per boot attempt, without the token.
        listed = json.loads(corral("board", "console", board.name, "--attempts", "--json"))
        captured = {a["attempt"]: corral("board", "console", board.name, "--attempt",
                                         str(a["attempt"])) for a in listed}
        booted = [n for n, text in captured.items() if "corral.token=(hidden)" in text]
        assert booted, f"{board.name}: the captured console has no kernel command line"
        assert not any(t in text for t in tokens for text in captured.values())
