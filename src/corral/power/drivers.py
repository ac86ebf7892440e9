"""The power drivers a board may name, and the two that wrap the process-wide
backends (``simulated`` dice and ``command`` templates). :data:`DRIVERS` is
the one list of them; :data:`BoardPower` validates a board's ``power:``
mapping with the settings model of the driver it names.

Importing this module imports no protocol library: each driver imports
``sushy`` or ``pysnmp`` (the ``power`` extra) when it first runs, so a lab
without BMCs runs without them installed. A board naming a driver whose
library is missing is refused at inventory import and by ``serve``
(:func:`missing_extra`), not retried for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import Discriminator, Tag

from corral.operations.base import Handler
from corral.operations.command import CommandBackend
from corral.operations.simulated import SimulatedLab
from corral.power.base import UNKNOWN, PowerDriver, PowerTarget, missing_library
from corral.power.ipmi import IpmiDriver
from corral.power.qemu import QemuDriver
from corral.power.redfish import RedfishDriver
from corral.power.settings import FreeSettings, OpenSettings, PowerSettings
from corral.power.snmp import SnmpDriver


class SimulatedSettings(OpenSettings):
    driver: Literal["simulated"]


class CommandSettings(OpenSettings):
    driver: Literal["command"]


class SimulatedPower:
    """The simulated lab's dice, for boards that name ``driver: simulated``
    (or have no driver in a simulated engine)."""

    Settings: ClassVar[type[PowerSettings]] = SimulatedSettings
    reports_state: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()

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

    Settings: ClassVar[type[PowerSettings]] = CommandSettings
    reports_state: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()

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


# Every power driver a board may name: the one list. Each class names its
# settings model, whose ``driver`` literal is the name a board gives.
DRIVERS: dict[str, type[Any]] = {
    get_args(cls.Settings.model_fields["driver"].annotation)[0]: cls
    for cls in (RedfishDriver, IpmiDriver, SnmpDriver, QemuDriver, CommandPower, SimulatedPower)
}
_BACKEND_WRAPPERS = ("command", "simulated")


def _driver_of(settings: Any) -> str:
    """The tag choosing a board's settings model ("" without a driver)."""
    driver = settings.get("driver") if isinstance(settings, Mapping) else None
    if driver is None:
        return ""
    # A tag must be hashable; any other value is an unknown driver.
    return driver if isinstance(driver, str) else repr(driver)


BoardPower = Annotated[  # type: ignore[valid-type]
    # A Union of a generated tuple: ``|`` cannot write it.
    Union[
        (Annotated[FreeSettings, Tag("")],
         *(Annotated[cls.Settings, Tag(name)] for name, cls in DRIVERS.items()))],
    Discriminator(_driver_of, custom_error_type="unknown_driver",
                  custom_error_message=f"must be one of {', '.join(sorted(DRIVERS))}"),
]
"""A board's ``power:`` mapping: the settings model of the driver it names."""


def missing_extra(driver: str) -> str | None:
    """Why boards of ``driver`` cannot be powered by this installation (its
    library, from the power extra, does not import), or None."""
    cls = DRIVERS.get(driver)
    return missing_library(driver, cls.needs) if cls is not None else None


def drivers_missing_extra(boards: Iterable[tuple[str, Any]]) -> dict[str, list[str]]:
    """``{message: [board, ...]}`` for the boards of ``(name, attributes)``
    whose driver cannot run here; each driver is imported once."""
    missing: dict[str, list[str]] = {}
    known: dict[str, str | None] = {}
    for name, attrs in boards:
        power = attrs.get("power") if isinstance(attrs, Mapping) else None
        driver = power.get("driver") if isinstance(power, Mapping) else None
        if not isinstance(driver, str):
            continue
        if driver not in known:
            known[driver] = missing_extra(driver)
        message = known[driver]
        if message is not None:
            missing.setdefault(message, []).append(name)
    return missing


def protocol_drivers() -> dict[str, PowerDriver]:
    """The drivers that speak to a controller themselves (the process-wide
    backends are added by whoever builds them)."""
    return {name: cls() for name, cls in DRIVERS.items() if name not in _BACKEND_WRAPPERS}


def simulated_power(lab: SimulatedLab) -> dict[str, Handler]:
    """Power handlers for a lab whose boards without a driver are simulated
    (what ``corral serve --simulate`` and the tests use)."""
    from corral.power.service import PowerOperations

    return PowerOperations({**protocol_drivers(), "simulated": SimulatedPower(lab)},
                           default="simulated").handlers()
