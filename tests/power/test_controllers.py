"""One command at a time per controller, across engine processes: two
processes, ten boards on one PDU (snmpsim), every board cycled, and no two
commands ever in flight at once."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from itertools import pairwise

import pytest

from corral.engine.core import Engine
from corral.machines import MachineSet, load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store import open_store
from tests.integration.helpers import operations_of
from tests.power.conftest import COMMUNITY, start_pdu
from tests.processes import stop


@pytest.mark.postgres
def test_two_engines_never_send_one_pdu_two_commands_at_once(pg_migrated_url, tmp_path):
    process, pdu = start_pdu(tmp_path)
    try:
        store = open_store(pg_migrated_url)
        engine = Engine(store, MachineSet(load_definitions(DEFAULT_STATEMACHINES_DIR)))
        names = [f"pdu-board-{n}" for n in range(1, 11)]
        for outlet, name in enumerate(names, start=1):
            engine.create("board", name, attrs={"power": {
                "driver": "snmp", "pdu": "apc_rackpdu", "address": "127.0.0.1",
                "port": pdu.port, "outlet": outlet, "community": COMMUNITY,
                "cycle_delay": 0.3}})
            engine.force_state("board", name, "power_cycling", actor="t", reason="t")
        start = tmp_path / "go"
        cyclers = [subprocess.Popen([sys.executable, "-m", "tests.power.cycler", pg_migrated_url,
                                     "--owner", f"engine-{n}", "--start-at", str(start),
                                     "--seconds", "120"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                   for n in (1, 2)]
        start.touch()
        leased = []
        for cycler in cyclers:
            out, _ = cycler.communicate(timeout=180)
            assert cycler.returncode == 0, out.decode()[-3000:]
            leased.append(int(out.decode().split("leased ")[-1]))
        cycles = [op for name in names for op in operations_of(engine, name)
                  if op.kind == "power_cycle"]
        assert len(cycles) == 10
        assert {op.status for op in cycles} == {"done"}, [(op.status, op.error) for op in cycles
                                                         if op.status != "done"]
        assert {engine.get("board", n).state for n in names} == {"rebooting"}
        assert {op.lease_owner for op in cycles} == {None}
        spans = sorted((datetime.fromisoformat(op.result["command_started_at"]),
                        datetime.fromisoformat(op.result["command_finished_at"]))
                       for op in cycles)
        for (_, finished), (started, _) in pairwise(spans):
            assert finished <= started, "two commands were in flight at once"
        # Both processes ran power cycles: the slots, not one process, kept order.
        assert all(count > 0 for count in leased), leased
        assert all(pdu.outlet(n) == 1 for n in range(1, 11))
        store.dispose()
    finally:
        stop(process)
