"""The board machine driving real controllers: a reimage through the Redfish
emulator sets the next boot to the network before the reset; retiring powers
a board off; a refusing BMC is not retried by the outbox, a silent PDU is,
and the counter sends either board to failed_power_cycling; secrets never
come back out."""

from __future__ import annotations

import re
import socket
import sys

import pytest
from structlog.testing import capture_logs

from corral.engine.worker import OperationWorker
from corral.operations.base import board_handlers
from corral.operations.simulated import SimulatedLab, SimulatedRates
from corral.power.drivers import SimulatedPower, protocol_drivers
from corral.power.service import PowerOperations
from tests.integration.helpers import operations_of
from tests.power.conftest import COMMUNITY, PASSWORD, silent_listener

# The engine's backends have their own tests; these are about the controllers,
# so they run on SQLite only (each waits seconds on an emulator).
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

LAB = SimulatedLab(rates=SimulatedRates(power_cycle_failure=0, ping_failure=0, poll_failure=0))


def _worker(engine, **kwargs) -> OperationWorker:
    power = PowerOperations({**protocol_drivers(), "simulated": SimulatedPower(LAB)},
                            default="simulated", verify_interval=0.2)
    return OperationWorker(engine, board_handlers(power.handlers(), LAB, LAB), owner="t",
                           **kwargs)


def _ready(engine, name: str, power: dict) -> None:
    engine.create("board", name, attrs={"mac": "52:54:00:00:0f:01", "power": power})
    engine.force_state("board", name, "ready", actor="t", reason="t")


def test_a_reimage_through_redfish_sets_pxe_once_before_the_reset(engine, redfish):
    power = {"driver": "redfish", "address": redfish.url, "system": "sys-1",
             "username": "admin", "password": PASSWORD}
    _ready(engine, "rf-1", power)
    worker = _worker(engine)
    worker.run_pending()
    engine.fire("board", "rf-1", "reimage", source="operator", role="operator")
    for _ in range(4):
        worker.run_pending()
    assert engine.get("board", "rf-1").state == "pxe_booting"
    system = redfish.system("sys-1")
    assert system["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    assert system["PowerState"] == "On"
    # In the emulator's own log of requests: the boot override, then the reset.
    log = redfish.log.read_text()
    override = log.index("PATCH /redfish/v1/Systems/sys-1 ")
    reset = log.index("POST /redfish/v1/Systems/sys-1/Actions/ComputerSystem.Reset")
    assert override < reset
    kinds = [(op.kind, op.status) for op in operations_of(engine, "rf-1")]
    assert ("set_boot_device", "done") in kinds
    assert kinds.index(("set_boot_device", "done")) < kinds.index(("power_cycle", "done"))
    asked = next(op.result for op in operations_of(engine, "rf-1")
                 if op.kind == "set_boot_device")
    assert asked["asked"]["BootSourceOverrideEnabled"] == "Once"
    # Retiring switches the board off.
    engine.fire("board", "rf-1", "retire", source="operator", role="admin")
    worker.run_pending()
    assert redfish.system("sys-1")["PowerState"] == "Off"
    assert engine.history("board", "rf-1", limit=1)[0].event == "power_off_ok"


def test_a_refusing_bmc_is_not_retried_and_the_counter_gives_up(engine, clock, redfish):
    power = {"driver": "redfish", "address": redfish.url, "system": "sys-2",
             "username": "admin", "password": "not-the-password"}
    engine.create("board", "rf-2", attrs={"power": power})
    engine.force_state("board", "rf-2", "power_cycling", actor="t", reason="t")
    worker = _worker(engine)
    for _ in range(6):
        worker.run_pending()
    row = engine.get("board", "rf-2")
    assert row.state == "failed_power_cycling"
    cycles = [op for op in operations_of(engine, "rf-2") if op.kind == "power_cycle"]
    # One attempt per state entry (the counter's max is 3: four entries).
    assert [op.attempts for op in cycles] == [1, 1, 1, 1]
    assert all("refused the credentials (HTTP 401)" in op.error for op in cycles)


def test_a_driver_whose_library_is_gone_fails_at_once_saying_which_extra(engine, clock,
                                                                          monkeypatch):
    # A board imported where the power extra was installed, run where it is
    # not (serve refuses such a lab; this is the library going away under it).
    for name in [n for n in sys.modules if n.startswith("sushy.")] + ["sushy"]:
        monkeypatch.setitem(sys.modules, name, None)
    engine.create("board", "rf-3", attrs={"power": {"driver": "redfish",
                                                    "address": "https://bmc-3.lab"}})
    engine.force_state("board", "rf-3", "power_cycling", actor="t", reason="t")
    worker = _worker(engine)
    for _ in range(6):
        worker.run_pending()
    assert engine.get("board", "rf-3").state == "failed_power_cycling"
    cycles = [op for op in operations_of(engine, "rf-3") if op.kind == "power_cycle"]
    assert [op.attempts for op in cycles] == [1, 1, 1, 1]
    assert {op.error for op in cycles} == {
        "board rf-3: driver redfish needs the power extra: pip install 'corral[power]'"}


def test_a_silent_pdu_is_retried_with_backoff_then_the_counter_gives_up(engine, clock):
    with silent_listener(socket.SOCK_DGRAM) as port:
        power = {"driver": "snmp", "pdu": "apc_rackpdu", "address": "127.0.0.1", "port": port,
                 "outlet": 1, "community": COMMUNITY, "timeout": 0.5}
        engine.create("board", "pdu-1", attrs={"power": power})
        engine.force_state("board", "pdu-1", "power_cycling", actor="t", reason="t")
        worker = _worker(engine, retry_delay=5.0)
        worker.run_pending()
        first = operations_of(engine, "pdu-1")[-1]
        assert (first.status, first.attempts) == ("pending", 1)
        assert "did not answer" in first.error
        assert (first.run_after - clock()).total_seconds() == pytest.approx(5, abs=0.5)
        clock.advance(6)
        worker.run_pending()
        again = operations_of(engine, "pdu-1")[-1]
        assert (again.id, again.attempts) == (first.id, 2)
        assert (again.run_after - clock()).total_seconds() == pytest.approx(10, abs=0.5)
        for _ in range(4):  # the state's timeout counts each silent round
            clock.advance(61)
            engine.sweeper.sweep_timeouts()
        assert engine.get("board", "pdu-1").state == "failed_power_cycling"


def test_secrets_never_come_back_out(engine, clock, redfish, tmp_path):
    secret_file = tmp_path / "bmc.pass"
    secret_file.write_text(PASSWORD + "\n")
    inline = {"driver": "snmp", "pdu": "apc_rackpdu", "address": "127.0.0.1", "port": 9,
              "outlet": 1, "community": COMMUNITY}
    from_file = {"driver": "redfish", "address": redfish.url, "system": "sys-3",
                 "username": "admin", "password_file": str(secret_file)}
    engine.create("board", "pdu-9", attrs={"power": inline, "power_community": COMMUNITY})
    _ready(engine, "rf-3", from_file)
    worker = _worker(engine)
    with capture_logs() as logs:
        engine.fire("board", "rf-3", "reimage", source="operator", role="operator")
        engine.force_state("board", "pdu-9", "power_cycling", actor="t", reason="t")
        for _ in range(4):
            worker.run_pending()
    assert engine.get("board", "rf-3").state == "pxe_booting"  # the file's password works
    shown = engine.describe(engine.get("board", "pdu-9"), "admin")
    assert shown["attrs"]["power"]["community"] == "(hidden)"
    assert shown["attrs"]["power_community"] == "(hidden)"
    said = repr(logs) + repr(shown) + repr(engine.describe(engine.get("board", "rf-3"), "admin"))
    for name in ("pdu-9", "rf-3"):
        said += repr(engine.history("board", name, limit=100))
        said += repr([(op.result, op.error, op.payload) for op in operations_of(engine, name)])
    assert re.search(re.escape(COMMUNITY) + "|" + re.escape(PASSWORD), said) is None
