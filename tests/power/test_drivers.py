"""Each power driver against a real emulator: cycle, on/off, status, the next
boot device, and how failures are classified (a refusal is definite, silence
is transient)."""

from __future__ import annotations

import socket
import time

import pytest

from corral.power.base import PowerFailed, PowerUnavailable
from corral.power.drivers import protocol_drivers
from corral.power.service import PowerOperations
from tests.power.conftest import COMMUNITY, PASSWORD, ctx, silent_listener

OPS = PowerOperations(protocol_drivers(), default="redfish", verify_interval=0.2)


def _redfish(url: str, **more) -> dict:
    return {"driver": "redfish", "address": url, "system": "sys-1", "username": "admin",
            "password": PASSWORD, **more}


def _ipmi(port: int, **more) -> dict:
    return {"driver": "ipmi", "address": "127.0.0.1", "port": port, "username": "admin",
            "password": PASSWORD, **more}


def _snmp(port: int, **more) -> dict:
    return {"driver": "snmp", "pdu": "apc_rackpdu", "address": "127.0.0.1", "port": port,
            "outlet": 3, "community": COMMUNITY, "cycle_delay": 0.2, **more}


# ----------------------------------------------------------------- Redfish

def test_redfish_on_off_cycle_and_the_next_boot(redfish):
    power = _redfish(redfish.url)
    on = OPS.power_on(ctx("rf-1", power, kind="power_on"))
    assert (on["asked"], on["state"]) == ("On", "on")
    assert redfish.system("sys-1")["PowerState"] == "On"
    off = OPS.power_off(ctx("rf-1", power, kind="power_off"))
    assert off["state"] == "off"
    assert redfish.system("sys-1")["PowerState"] == "Off"
    boot = OPS.set_boot_device(ctx("rf-1", power, kind="set_boot_device"))
    assert boot["asked"] == {"BootSourceOverrideTarget": "Pxe",
                             "BootSourceOverrideEnabled": "Once"}
    assert redfish.system("sys-1")["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    # A cycle of a system that is off switches it on (BMCs refuse to restart it).
    cycled = OPS.power_cycle(ctx("rf-1", power))
    assert (cycled["asked"], cycled["was"], cycled["state"]) == ("On", "off", "on")
    cycled = OPS.power_cycle(ctx("rf-1", power))
    assert (cycled["asked"], cycled["state"]) == ("ForceRestart", "on")
    assert redfish.system("sys-1")["PowerState"] == "On"
    # A retried on (after the first took effect) asks for nothing.
    assert OPS.power_on(ctx("rf-1", power, kind="power_on"))["asked"] == "nothing"


def test_redfish_finds_the_only_system_or_asks_which(redfish):
    power = _redfish(redfish.url)
    del power["system"]
    with pytest.raises(PowerFailed, match=r"has 3 systems .*name one with system:"):
        OPS.power_off(ctx("rf-1", power, kind="power_off"))
    path = _redfish(redfish.url, system="/redfish/v1/Systems/sys-2")
    assert OPS.power_off(ctx("rf-2", path, kind="power_off"))["state"] == "off"


def test_redfish_wrong_credentials_are_definite_and_asked_once(redfish):
    before = redfish.log.read_text().count("\n")
    with pytest.raises(PowerFailed, match=r"refused the credentials \(HTTP 401\)") as failure:
        OPS.power_cycle(ctx("rf-1", _redfish(redfish.url, password="wrong")))
    assert PASSWORD not in str(failure.value)
    assert "wrong" not in str(failure.value)
    # One connection's worth of requests, not a retry loop.
    assert redfish.log.read_text().count("\n") - before <= 6


def test_redfish_unreachable_and_slow_are_transient():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(PowerUnavailable, match="did not answer"):
        OPS.power_cycle(ctx("rf-1", _redfish(f"http://127.0.0.1:{closed}", timeout=1)))
    with silent_listener(socket.SOCK_STREAM) as port:
        started = time.monotonic()
        with pytest.raises(PowerUnavailable, match="did not answer"):
            OPS.power_cycle(ctx("rf-1", _redfish(f"http://127.0.0.1:{port}", timeout=1)))
        assert time.monotonic() - started < 30


# ----------------------------------------------------------------- IPMI

def test_ipmi_on_off_cycle_status_and_bootdev(ipmi):
    power = _ipmi(ipmi.port)
    assert OPS.power_on(ctx("ip-1", power, kind="power_on"))["state"] == "on"
    assert ipmi.power() == "1"
    cycled = OPS.power_cycle(ctx("ip-1", power))
    assert (cycled["asked"], cycled["state"]) == ("chassis power cycle", "on")
    # The BMC's own record: the cycle switched the chassis off, then on.
    assert any(line.endswith("set power 0") for line in ipmi.commands())
    assert ipmi.commands()[-1].split()[-3:] != ["set", "power", "0"]
    boot = OPS.set_boot_device(ctx("ip-1", _ipmi(ipmi.port, boot_mode="uefi"),
                                   kind="set_boot_device"))
    assert boot["asked"] == "chassis bootdev pxe options=efiboot"
    assert (ipmi.chassis / "boot").read_text().strip() == "pxe"
    assert OPS.power_off(ctx("ip-1", power, kind="power_off"))["state"] == "off"
    assert ipmi.power() == "0"
    # A cycle of a board that is off powers it on.
    assert OPS.power_cycle(ctx("ip-1", power))["was"] == "off"
    assert ipmi.power() == "1"


def test_ipmi_wrong_credentials_are_definite(ipmi):
    for power, said in ((_ipmi(ipmi.port, password="wrong"), "HMAC is invalid"),
                        (_ipmi(ipmi.port, username="nobody"), "unauthorized name")):
        with pytest.raises(PowerFailed, match=said) as failure:
            OPS.power_cycle(ctx("ip-1", power))
        assert PASSWORD not in str(failure.value)
    assert not any("set power" in line for line in ipmi.commands())


def test_ipmi_unreachable_or_slow_bmc_is_transient():
    with silent_listener(socket.SOCK_DGRAM) as port:
        with pytest.raises(PowerUnavailable, match="did not answer"):
            OPS.power_cycle(ctx("ip-1", _ipmi(port, timeout=2)))
        with pytest.raises(PowerUnavailable, match="did not answer"):
            OPS.power_cycle(ctx("ip-1", _ipmi(port, timeout=30)))


# ----------------------------------------------------------------- SNMP

def test_snmp_outlet_on_off_cycle_and_status(pdu):
    power = _snmp(pdu.port)
    assert OPS.power_off(ctx("pdu-3", power, kind="power_off"))["state"] == "off"
    assert pdu.outlet(3) == 2
    assert pdu.outlet(4) == 1  # its neighbour is untouched
    cycled = OPS.power_cycle(ctx("pdu-3", power))
    assert (cycled["asked"], cycled["state"]) == ("outlet 3 off, 0.2 s, on", "on")
    assert pdu.outlet(3) == 1
    boot = OPS.set_boot_device(ctx("pdu-3", power, kind="set_boot_device"))
    assert boot["skipped"] == "driver snmp has no boot device to set"


def test_snmp_v3_with_auth_and_privacy(pdu):
    power = {"driver": "snmp", "pdu": "apc_rackpdu", "address": "127.0.0.1", "port": pdu.port,
             "outlet": 5, "version": "3", "user": "corral", "auth_key": "auth-k3y-123",
             "priv_key": "priv-k3y-456", "context": COMMUNITY}
    assert OPS.power_off(ctx("pdu-5", power, kind="power_off"))["state"] == "off"
    assert pdu.outlet(5) == 2
    with pytest.raises(PowerFailed, match="Wrong SNMP PDU digest"):
        OPS.power_on(ctx("pdu-5", {**power, "auth_key": "not-the-k3y"}, kind="power_on"))
    assert pdu.outlet(5) == 2


def test_snmp_wrong_community_is_definite_and_a_missing_outlet_named(pdu):
    with pytest.raises(PowerFailed, match="answers, but not to this community") as failure:
        OPS.power_off(ctx("pdu-3", _snmp(pdu.port, community="wrong", timeout=1),
                          kind="power_off"))
    assert COMMUNITY not in str(failure.value)
    assert pdu.outlet(3) == 1
    with pytest.raises(PowerFailed, match="has no outlet 99"):
        OPS.power_off(ctx("pdu-99", _snmp(pdu.port, outlet=99), kind="power_off"))


def test_snmp_unreachable_or_slow_pdu_is_transient():
    with silent_listener(socket.SOCK_DGRAM) as port:
        with pytest.raises(PowerUnavailable, match=r"did not answer .* within 1 s"):
            OPS.power_off(ctx("pdu-3", _snmp(port, timeout=1), kind="power_off"))
