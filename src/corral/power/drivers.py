"""The power drivers a board may name, and the two that wrap the process-wide
backends (``simulated`` dice and ``command`` templates).

Importing this module imports no protocol library: each driver imports
``sushy``, ``pyghmi`` or ``pysnmp`` when it first runs, so an inventory is
checked (and a lab without BMCs runs) without them installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from corral.operations.base import Handler
from corral.operations.command import CommandBackend
from corral.operations.simulated import SimulatedLab
from corral.power.base import UNKNOWN, PowerDriver, PowerTarget, SettingsSpec
from corral.power.ipmi import IpmiDriver
from corral.power.qemu import QemuDriver
from corral.power.redfish import RedfishDriver
from corral.power.snmp import SnmpDriver


class SimulatedPower:
    """The simulated lab's dice, for boards that name ``driver: simulated``
    (or have no driver in a simulated engine)."""

    SPEC: ClassVar[SettingsSpec] = SettingsSpec(open=True)
    reports_state: ClassVar[bool] = False

    def __init__(self, lab: SimulatedLab) -> None:
        self.lab = lab

    def power_cycle(self, target: PowerTarget) -> Mapping[str, Any]:
        return self.lab.cycle(target.ctx)

    def power_on(self, target: PowerTarget) -> Mapping[str, Any]:
        return self.lab.cycle(target.ctx)

    def power_off(self, target: PowerTarget) -> Mapping[str, Any]:
        return {"simulated": True}

    def power_state(self, target: PowerTarget) -> str:
        return UNKNOWN

    def set_boot_device(self, target: PowerTarget, device: str, *, persistent: bool
                        ) -> Mapping[str, Any]:
        return {"simulated": True, "device": device}


class CommandPower:
    """Shell command templates (``commands.power_cycle``, ``power_on``,
    ``power_off``, ``set_boot_device`` or the ``command_*`` settings). Its
    settings are free: they are the templates' ``{power_*}`` variables."""

    SPEC: ClassVar[SettingsSpec] = SettingsSpec(open=True)
    reports_state: ClassVar[bool] = False

    def __init__(self, backend: CommandBackend) -> None:
        self.backend = backend

    def power_cycle(self, target: PowerTarget) -> Mapping[str, Any]:
        return self.backend.cycle(replace(target.ctx, kind="power_cycle"))

    def power_on(self, target: PowerTarget) -> Mapping[str, Any]:
        return self._optional(target, "power_on") or {"skipped": "no power_on command"}

    def power_off(self, target: PowerTarget) -> Mapping[str, Any]:
        return self._optional(target, "power_off") or {
            "skipped": "no power_off command (commands.power_off or command_power_off)"}

    def power_state(self, target: PowerTarget) -> str:
        return UNKNOWN

    def set_boot_device(self, target: PowerTarget, device: str, *, persistent: bool
                        ) -> Mapping[str, Any] | None:
        return self._optional(target, "set_boot_device")

    def _optional(self, target: PowerTarget, kind: str) -> Mapping[str, Any] | None:
        ctx = replace(target.ctx, kind=kind)
        if not self.backend.has_command(ctx):
            return None
        return self.backend.run(ctx)


# The settings each driver accepts, for checking an inventory.
SPECS: dict[str, SettingsSpec] = {
    "redfish": RedfishDriver.SPEC,
    "ipmi": IpmiDriver.SPEC,
    "snmp": SnmpDriver.SPEC,
    "qemu": QemuDriver.SPEC,
    "command": CommandPower.SPEC,
    "simulated": SimulatedPower.SPEC,
}


def protocol_drivers() -> dict[str, PowerDriver]:
    """The drivers that speak to a controller themselves (the process-wide
    backends are added by whoever builds them)."""
    return {"redfish": RedfishDriver(), "ipmi": IpmiDriver(), "snmp": SnmpDriver(),
            "qemu": QemuDriver()}


def simulated_power(lab: SimulatedLab) -> dict[str, Handler]:
    """Power handlers for a lab whose boards without a driver are simulated
    (what ``corral serve --simulate`` and the tests use)."""
    from corral.power.service import PowerOperations

    return PowerOperations({**protocol_drivers(), "simulated": SimulatedPower(lab)},
                           default="simulated").handlers()
