"""The contract between the outbox and the things that touch hardware.

An operation kind (``power_cycle``, ``set_boot_device``, ``power_off``,
``ping``, ``poll``, ``write_pxe_config``, ``boot_local``) is run by a handler: a
callable taking an :class:`OperationContext` and returning a detail mapping on
success. It raises :class:`OperationFailed` when the operation ran and
definitely failed (reported as ``<kind>_failed``); any other exception is
transient and the operation is retried with backoff. Handlers must be
idempotent: after a worker dies an operation runs again, and ``operation_id``
is there for backends that can deduplicate.
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


class Poller(Protocol):
    def ping(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...

    def poll(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...


class PxeWriter(Protocol):
    def write(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...

    def boot_local(self, ctx: OperationContext) -> Mapping[str, Any] | None: ...


def board_handlers(power: Mapping[str, Handler], poller: Poller, pxe: PxeWriter
                   ) -> dict[str, Handler]:
    """The operation kinds the board machine uses, bound to backends: the power
    kinds (``power_cycle``, ``power_off``, ``set_boot_device``, ...) come from
    ``corral.power.service.PowerOperations``."""
    return {
        **power,
        "ping": poller.ping,
        "poll": poller.poll,
        "write_pxe_config": pxe.write,
        "boot_local": pxe.boot_local,
    }
