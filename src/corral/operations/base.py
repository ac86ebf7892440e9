"""The contract between the outbox and the things that touch hardware.

An operation kind (``power_cycle``, ``ping``, ``poll``, ``write_pxe_config``,
``boot_local``)
is run by a handler: a callable taking an :class:`OperationContext` and
returning a detail mapping on success. It raises :class:`OperationFailed` when
the operation ran and definitely failed (reported as ``<kind>_failed``); any
other exception is transient and the operation is retried with backoff.
Handlers must be idempotent: after a worker dies an operation runs again, and
``operation_id`` is there for backends that can deduplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class OperationFailed(Exception):
    """The operation ran and failed; the machine should hear ``<kind>_failed``."""

    def __init__(self, reason: str, **detail: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Reported:
    """Returned by a handler to report ``<kind>_<outcome>`` instead of ``<kind>_ok``
    (a job's ``start_action`` reports ``complete`` when no action is left)."""

    outcome: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class OperationContext:
    operation_id: int
    kind: str
    machine_kind: str
    name: str
    attrs: Mapping[str, Any]
    payload: Mapping[str, Any]
    attempt: int
    # The machine's vars: values earlier events declared for later states.
    vars: Mapping[str, Any] = field(default_factory=dict)


Handler = Callable[[OperationContext], "Mapping[str, Any] | Reported | None"]


class PowerDriver(Protocol):
    def cycle(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...


class Poller(Protocol):
    def ping(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...

    def poll(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...


class PxeWriter(Protocol):
    def write(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...

    def boot_local(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...


def board_handlers(power: PowerDriver, poller: Poller, pxe: PxeWriter) -> dict[str, Handler]:
    """The operation kinds the board machine uses, bound to backends."""
    return {
        "power_cycle": power.cycle,
        "ping": poller.ping,
        "poll": poller.poll,
        "write_pxe_config": pxe.write,
        "boot_local": pxe.boot_local,
    }


class PowerByDriver:
    """A ``PowerDriver`` that hands each board to the driver its inventory
    names (``power: {driver: NAME, ...}``), and the others to ``default``."""

    def __init__(self, default: PowerDriver, drivers: Mapping[str, PowerDriver]) -> None:
        self.default = default
        self.drivers = dict(drivers)

    def cycle(self, ctx: OperationContext) -> Mapping[str, Any] | None:
        name = ctx.attrs.get("power_driver")
        if name is None:
            return self.default.cycle(ctx)
        driver = self.drivers.get(name) if isinstance(name, str) else None
        if driver is None:
            raise OperationFailed(f"board {ctx.name} names power driver {name!r}; drivers: "
                                  f"{', '.join(sorted(self.drivers))}")
        return driver.cycle(ctx)
