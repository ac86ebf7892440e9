"""Corral reimages real (virtual) boards end to end: a SeaBIOS board through
QEMU's iPXE ROM and pxelinux, an OVMF board through GRUB, and a SeaBIOS board
whose iPXE ROM runs the script Corral serves over HTTP, each netbooting the
configuration Corral wrote, running the reference second stage, which writes
the image to the board's disk and reports with the reimage token, then
rebooting into the installed system, which the ping finds on the network.

The same lab proves the health checks: lab-bios-2's disk does not boot, so
its checks fail at the ping and it ends failed_health (suspect first, by the
k-of-n rule); the power controller of lab-uefi-1 and lab-ipxe-1 goes away, so
their checks fail at the power cycle, the controller is found degraded and
they wait as unknown, not failed, until it is back.

Nothing is simulated: power is IPMI (lab-bios-1's BMC is OpenIPMI's ipmi_sim,
which runs its VM) or QMP, DHCP and TFTP are dnsmasq's on a bridge in a
network namespace (QEMU's user network where namespaces are refused; the
tests say which), the ping is an HTTP request to the installed system, the
callbacks cross the network."""

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
from corral.lab import DISK_MB, Lab

from .conftest import NETWORK

CORRAL = str(Path(sys.executable).with_name("corral"))
# A reimaged board is health-checked (the lab's definition: a power cycle
# over its own driver, a ping, a poll) before it is ready again.
REIMAGE_PATH = ["reimage", "write_pxe_config_ok", "set_boot_device_ok", "power_cycle_ok",
                "second_stage_started", "install_ok", "boot_local_ok", "timeout", "ping_ok",
                "admit", "health_check_ok", "check_passed"]
STATES = ["pxe_configuring", "pxe_boot_device", "pxe_power_cycling", "pxe_booting",
          "installing", "rebooting", "rebooting", "pinging", "check_queued", "checking",
          "judging", "ready"]


PING_RETRY = [("ping_failed", "pinging"), ("timeout", "pinging")]


def _without_ping_retries(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The steps with each retried ping (a failure and the wait after it) left out."""
    kept: list[tuple[str, str]] = []
    for step in steps:
        kept.append(step)
        if kept[-2:] == PING_RETRY:
            del kept[-2:]
    return kept


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

    def since(self, name: str, mark: int) -> list[dict]:
        return [e for e in self.history(name) if e["id"] > mark]

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


GOOD = ["lab-bios-1", "lab-uefi-1", "lab-ipxe-1"]
BROKEN = "lab-bios-2"


@pytest.fixture(scope="module")
def lab(lab_host, tmp_path_factory):
    """Four boards: three that work, and lab-bios-2, whose disk is all zeros
    (no boot sector, no partition). Imported once Corral serves them."""
    tmp_path = tmp_path_factory.mktemp("lab")
    # accel auto: KVM only where the probe says so.
    lab = Lab(tmp_path / "lab", boards=4, network=NETWORK)
    print(f"the lab's network: {lab.network}"
          + (f" (namespace {lab.namespace.name}, {lab.namespace.subnet})" if lab.namespace
             else " (QEMU's user network" + ("" if NETWORK == "user" else
                                              ": ip netns add is refused here") + ")"))
    server = log = None
    try:
        lab.build()
        broken = next(b for b in lab.boards if b.name == BROKEN)
        broken.directory.mkdir(parents=True, exist_ok=True)
        with open(broken.disk, "wb") as disk:
            disk.truncate(DISK_MB * 1024 * 1024)
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
        server = subprocess.Popen([CORRAL, "serve", "--listen",
                                   f"{lab.corral_host}:{http_port}"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        corral("board", "import", str(lab.inventory))
        yield lab, corral, f"http://{lab.corral_host}:{http_port}"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if log is not None:
            log.close()
        lab.stop()
        if lab.namespace:
            assert not lab.namespace.exists(), f"namespace {lab.namespace.name} is left"
        if lab.namespace and (lab.directory / "dnsmasq.log").exists():
            print("--- dnsmasq (tail) ---")
            print((lab.directory / "dnsmasq.log").read_text(errors="replace")[-3000:])
        for board in lab.boards:
            # The consoles tell what the firmware and the second stage did.
            print(f"--- {board.name} console (tail) ---")
            console = board.console.read_text(errors="replace")[-3000:]
            print(re.sub(r"corral\.token=\S+", "corral.token=<hidden>", console))
        if (tmp_path / "serve.log").exists():
            print((tmp_path / "serve.log").read_text(errors="replace")[-5000:])


@pytest.fixture
def network(lab, request, record_testsuite_property):
    """Say which network the lab ran on: in the output, the test's
    user_properties and the JUnit report's suite properties."""
    request.node.user_properties.append(("lab_network", lab[0].network))
    record_testsuite_property("lab_network", lab[0].network)
    print(f"the lab's network: {lab[0].network}")


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("network")
def test_bios_uefi_and_ipxe_boards_are_reimaged_for_real(lab):
    lab, corral, url = lab
    boards = [b for b in lab.boards if b.name in GOOD]
    names = [b.name for b in boards]
    assert [b.firmware for b in boards] == ["bios", "uefi", "ipxe"]
    # Imported: health-checked (power cycled over IPMI or QMP, booted from the
    # disk they came with, pinged, polled), all three at once.
    corral.wait(names, "ready", since=0, seconds=600)
    for name in names:
        enrolled = [(e["event"], e["to_state"]) for e in corral.history(name)][:5]
        assert enrolled == [("create", "new"), ("timeout", "check_queued"),
                            ("admit", "checking"), ("health_check_ok", "judging"),
                            ("check_passed", "ready")], (name, enrolled)
    for board in boards:
        banner = httpx.get(f"http://{board.http}/", timeout=5).text
        assert banner.split() == ["corral-installed", board.mac, "preinstalled"]
    marks = {name: corral.history(name)[-1]["id"] for name in names}
    for name in names:
        corral("board", "event", name, "reimage", "--reason", "lab test")
    corral.wait(names, "ready", since=max(marks.values()), seconds=600)

    for board in boards:
        history = corral.since(board.name, marks[board.name])
        # Every step, in order, with nothing simulated in between (a poll of the
        # ready board may follow). Under TCG the installed system may come up
        # after the first ping: the board's retry (a failed ping, the wait, the
        # next ping) is the one loop allowed, as often as its retry limit lets.
        steps = _without_ping_retries([(e["event"], e["to_state"]) for e in history])
        assert steps[:len(REIMAGE_PATH)] == list(zip(REIMAGE_PATH, STATES, strict=True)), (
            board.name, history)
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
        banner = httpx.get(f"http://{board.http}/", timeout=5).text
        assert banner.split() == ["corral-installed", board.mac, "lab"]
        # Its netboot configurations boot the local disk.
        name = mac_file(board.mac)
        assert "LOCALBOOT 0" in (lab.tftp / "pxelinux.cfg" / name).read_text()
        assert 'chainloader "$corral_loader"' in (
            lab.tftp / "grub" / f"grub.cfg-{name}").read_text()
        script = httpx.get(f"{url}/boot/ipxe/{board.mac}", timeout=5)
        assert script.text.splitlines()[-1] == "exit"
        # The reimage token the board booted with (the kernel logs its command
        # line) is refused now.
        console = board.console.read_text(errors="replace")
        tokens = re.findall(r"corral\.token=(corral_\d+_[A-Za-z0-9_-]+)", console)
        assert tokens, f"{board.name}: no reimage token on the console"
        refused = httpx.post(f"{url}/api/v1/boards/{board.name}"
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
    if lab.namespace:
        # dnsmasq served each its loader over TFTP: pxelinux to the BIOS board
        # (whose iPXE ROM says it is iPXE), GRUB to the UEFI one, and the
        # configurations Corral wrote.
        served = (lab.directory / "dnsmasq.log").read_text(errors="replace")
        bios, uefi, _ipxe = boards
        address = {b.name: b.http.rpartition(":")[0] for b in boards}
        for board, path in ((bios, "pxelinux.0"), (bios, f"pxelinux.cfg/{mac_file(bios.mac)}"),
                            (uefi, "grub/grubx64.efi"),
                            (uefi, f"grub/grub.cfg-{mac_file(uefi.mac)}")):
            assert f"sent {lab.tftp / path} to {address[board.name]}" in served, path


def _wait_for(what, seconds: float):
    deadline = time.monotonic() + seconds
    while not (found := what()):
        assert time.monotonic() < deadline, f"timed out after {seconds} s"
        time.sleep(2)
    return found


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("network")
def test_health_checks_fail_a_board_that_does_not_boot_and_blame_a_dead_controller(lab):
    lab, corral, _url = lab
    behind = [b.name for b in lab.boards if b.controller == "lab-pdu-1"]
    assert behind == ["lab-uefi-1", "lab-ipxe-1"]
    corral.wait(behind, "ready", since=0, seconds=600)

    # lab-pdu-1 goes away: checks of its two boards fail at the power cycle.
    marks = {name: corral.history(name)[-1]["id"] for name in behind}
    lab.controller_down("lab-pdu-1")
    try:
        for name in behind:
            corral("board", "check", name, "--reason", "lab test: lab-pdu-1 is away")
        # The first to fail is suspect (one board is not yet the controller's
        # fault); the second makes two behind it: lab-pdu-1 is degraded, and
        # both wait as unknown, never failed.
        _wait_for(lambda: all(any(e["event"] == "check_unknown" for e in corral.since(n, m))
                              for n, m in marks.items()), 400)
        for name in behind:
            history = corral.since(name, marks[name])
            failed = [e for e in history if e["event"] == "health_check_failed"]
            assert failed, history
            assert {e["payload"]["step"] for e in failed} == {"power_cycle"}, failed
            assert {e["payload"]["equipment"] for e in failed} == {"controller:lab-pdu-1"}
            unknown = next(e for e in history if e["event"] == "check_unknown")
            assert unknown["payload"]["blame"] == "controller", unknown
            assert "controller:lab-pdu-1" in unknown["reason"], unknown
            assert not [e for e in history if e["event"] == "check_failed"], history
            assert not corral.board(name)["failed"]
    finally:
        lab.controller_up("lab-pdu-1")
    # Back: the next checks through it pass (the probe of one brings the
    # other back), and both are ready.
    corral.wait(behind, "ready", since=max(marks.values()), seconds=400)
    for name in behind:
        passed = [e for e in corral.since(name, marks[name]) if e["event"] == "check_passed"]
        assert passed, name

    # lab-bios-2's disk does not boot: each check fails at the ping; the
    # first makes it suspect, the second (2 of its last 3) fails it.
    _wait_for(lambda: corral.board(BROKEN)["state"] == "failed_health", 600)
    history = corral.history(BROKEN)
    verdicts = [(e["event"], e["payload"]["blame"]) for e in history
                if e["event"] in ("check_passed", "check_suspect", "check_unknown",
                                  "check_failed")]
    assert verdicts == [("check_suspect", "board"), ("check_failed", "board")], history
    failed = [e for e in history if e["event"] == "health_check_failed"]
    assert [e["payload"]["step"] for e in failed] == ["ping", "ping"], failed
    assert "2 of its last 3 checks failed" in history[-1]["reason"], history[-1]
    assert corral.board(BROKEN)["failed"]
