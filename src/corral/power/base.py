"""The contract between the board machine's power operations and one kind of
power controller (a BMC, a PDU, a relay script, a VM).

A driver is one module with one class implementing :class:`PowerDriver`, in
the labgrid style: ``power_cycle``, ``power_on``, ``power_off``,
``power_state`` and ``set_boot_device``, each taking the board's
:class:`PowerTarget` (its name and its validated ``power:`` settings). The
class names the model of the settings it accepts in ``Settings`` (checked at
inventory import, with file and line).

Errors are classified where they happen, because only the driver knows what
its protocol's answers mean:

- :class:`PowerFailed` (an :class:`OperationFailed`): the controller answered
  and refused (wrong credentials, an action it does not support, an outlet it
  does not have). Retrying cannot help: the machine hears ``<kind>_failed`` at
  once.
- :class:`PowerUnavailable`: the controller did not answer in time, refused
  the connection or said it is busy. The outbox retries with backoff; the
  state's timeout and counter decide when the board is given up on.

Messages never include a secret: drivers build them from the address, the
action and the controller's own words, never from the request they sent.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from corral.operations.base import OperationContext, OperationFailed

ON, OFF, UNKNOWN = "on", "off", "unknown"
# What `pip install corral` lacks for the drivers that speak a protocol
# through a library (the power extra of pyproject.toml).
POWER_EXTRA = "pip install 'corral[power]'"


class PowerFailed(OperationFailed):
    """The controller answered and refused: a definite failure, not retried."""


class PowerUnavailable(Exception):
    """The controller could not be reached or did not answer in time: retried."""


@dataclass(frozen=True, kw_only=True)
class PowerTarget:
    """What a driver needs to reach one board's controller."""

    ctx: OperationContext
    settings: Mapping[str, Any]
    # Reads a secret setting (password, community, ...) from where the
    # inventory says it is: inline, a file or an environment variable.
    secret: Callable[[str], str | None]

    @property
    def name(self) -> str:
        return self.ctx.name


class PowerDriver(Protocol):
    """One kind of power controller. Each method returns a detail mapping
    for the operation's result (what was asked and what the controller
    answered), or raises :class:`PowerFailed` / :class:`PowerUnavailable`."""

    # The settings a board of this driver accepts (a
    # corral.power.settings.PowerSettings model), checked at inventory import.
    Settings: ClassVar[type[Any]]
    # Whether power_state tells the truth (a relay script does not know).
    reports_state: ClassVar[bool]
    # The modules the driver imports when it runs (from the power extra).
    needs: ClassVar[tuple[str, ...]]

    def power_cycle(self, target: PowerTarget) -> Mapping[str, Any]: ...

    def power_on(self, target: PowerTarget) -> Mapping[str, Any]: ...

    def power_off(self, target: PowerTarget) -> Mapping[str, Any]: ...

    def power_state(self, target: PowerTarget) -> str: ...

    def set_boot_device(self, target: PowerTarget, device: str, *, persistent: bool
                        ) -> Mapping[str, Any] | None:
        """Returns None when the controller has no notion of a boot device
        (a PDU): the operation then reports that it had nothing to do."""
        ...


def missing_library(driver: str, needs: tuple[str, ...]) -> str | None:
    """Why ``driver`` cannot run in this Python, or None when it can: each
    module of ``needs`` is imported (a real import, so a library that is
    installed but broken counts as missing too; a loaded one costs nothing)."""
    for module in needs:
        try:
            importlib.import_module(module)
        except ImportError:
            return f"driver {driver} needs the power extra: {POWER_EXTRA}"
    return None

