"""The power drivers a board may name, and the two that wrap the process-wide
backends (``simulated`` dice and ``command`` templates).

Importing this module imports no protocol library: each driver imports
``sushy``, ``pyghmi`` or ``pysnmp`` when it first runs, so an inventory is
checked (and a lab without BMCs runs) without them installed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

from corral.operations.base import Handler
from corral.operations.command import CommandBackend
from corral.operations.simulated import SimulatedLab
from corral.power.base import UNKNOWN, PowerDriver, PowerTarget, SettingsSpec
from corral.power.ipmi import IpmiDriver
from corral.power.qemu import QemuDriver
from corral.power.redfish import RedfishDriver
from corral.power.settings import COMMON
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


def check_power(settings: Mapping[str, Any], line_of: Callable[[str], int],
                error: Callable[[int, str], None], *, line: int) -> None:
    """Report every problem of one board's ``power:`` mapping through ``error``."""
    driver = settings.get("driver")
    if driver is None:
        return
    if not isinstance(driver, str) or driver not in SPECS:
        error(line_of("driver"), f"power driver {driver!r} is not one of: "
              f"{', '.join(sorted(SPECS))}")
        return
    spec = SPECS[driver]
    allowed = COMMON + spec.keys()
    for key in settings:
        if key not in allowed and not spec.open:
            error(line_of(key), f"unknown power setting {key!r} for driver {driver}; allowed "
                  f"keys: {', '.join(allowed)}")
    for key in spec.required:
        if key not in settings:
            error(line, f"power driver {driver} needs {key!r}; allowed keys: "
                  f"{', '.join(allowed)}")
    for name in spec.secrets:
        given = [f"{name}{s}" for s in ("", "_file", "_env") if f"{name}{s}" in settings]
        if len(given) > 1:
            error(line_of(given[1]), f"give one of {', '.join(given)}, not several")
        for key in given:
            if not isinstance(settings[key], str) or not settings[key]:
                # The value may be the secret itself: never repeat it.
                error(line_of(key), f"{key} must be a non-empty string")
    for key, values in spec.choices.items():
        if key in settings and settings[key] not in values:
            error(line_of(key), f"{key} must be one of {', '.join(values)}, not "
                  f"{settings[key]!r}")
    for key in (*spec.integers, "concurrency"):
        value = settings.get(key)
        if key in settings and (isinstance(value, bool) or not isinstance(value, int)
                                or value < 0 or (key == "concurrency" and value < 1)):
            error(line_of(key), f"{key} must be a whole number"
                  f"{' of at least 1' if key == 'concurrency' else ''}, not {value!r}")
    for key in (*spec.numbers, "timeout", "power_on_wait"):
        value = settings.get(key)
        if key in settings and (isinstance(value, bool) or not isinstance(value, int | float)
                                or value <= 0):
            error(line_of(key), f"{key} must be a number of seconds above 0, not {value!r}")
    for key in spec.booleans:
        if key in settings and not isinstance(settings[key], bool):
            error(line_of(key), f"{key} must be true or false, not {settings[key]!r}")
    if driver == "redfish" and isinstance(settings.get("address"), str) and not str(
            settings["address"]).startswith(("http://", "https://")):
        error(line_of("address"), "a Redfish address is a URL: https://bmc-7.lab")
    if driver == "snmp" and any(f"priv_key{s}" in settings for s in ("", "_file", "_env")) \
            and not any(f"auth_key{s}" in settings for s in ("", "_file", "_env")):
        error(line_of("priv_key"), "SNMP v3 privacy (priv_key) needs auth_key too")
    for key in ("address", "controller", "system", "username", "ca_file", "user"):
        if key in settings and not isinstance(settings[key], str):
            error(line_of(key), f"{key} must be a string, not {settings[key]!r}")
