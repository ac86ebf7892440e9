"""A simulated lab: power, ping, poll and PXE without hardware.

Every result is a pure function of the seed, the board, the operation id and
the attempt, so a run is reproducible whatever order workers take operations
in. ``make run`` and the tests use it; users can run a whole lab on it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from corral.operations.base import OperationContext, OperationFailed


@dataclass(frozen=True, kw_only=True)
class SimulatedRates:
    """Failure probabilities per operation kind, and how long each takes."""

    power_cycle_failure: float = 0.02
    ping_failure: float = 0.1
    poll_failure: float = 0.02
    pxe_failure: float = 0.0
    seconds: float = 0.0
    # Boards whose name is listed here fail every operation: a board that
    # ends in a failed_* state for an operator to find.
    dead_boards: tuple[str, ...] = ()
    # A power controller (a board's power `relay` or `controller`) that
    # does not answer from `start` seconds after the lab starts, for
    # `seconds`: (name, start, seconds).
    outage: tuple[str, float, float] | None = None


def parse_outage(text: str) -> tuple[str, float, float] | None:
    """``relay-2@120+180`` as (name, start, seconds); None for ``""``.

    Raises:
        ValueError: not in that form.
    """
    if not text:
        return None
    name, _, when = text.partition("@")
    start, _, seconds = when.partition("+")
    if not name or not start.isdigit() or not seconds.isdigit():
        raise ValueError(f"a controller outage is NAME@START+SECONDS (relay-2@120+180), "
                         f"not {text!r}")
    return name, float(start), float(seconds)


class SimulatedLab:
    """Implements ``Poller`` and ``PxeWriter`` (and, wrapped by
    ``corral.power.drivers.SimulatedPower``, power) by dice rolls."""

    def __init__(self, *, seed: int = 0, rates: SimulatedRates | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.seed = seed
        self.rates = rates or SimulatedRates()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.started = self.clock()

    def controller_down(self, ctx: OperationContext) -> str | None:
        """The outage's controller, when it is down now and ``ctx``'s board is behind it."""
        if self.rates.outage is None:
            return None
        name, start, seconds = self.rates.outage
        power = ctx.attrs.get("power")
        settings: Mapping[str, Any] = power if isinstance(power, dict) else {}
        if name not in (settings.get("relay"), settings.get("controller")):
            return None
        since = (self.clock() - self.started).total_seconds()
        return name if start <= since < start + seconds else None

    def _roll(self, ctx: OperationContext, failure_rate: float) -> None:
        if self.rates.seconds:
            time.sleep(self.rates.seconds)
        if ctx.name in self.rates.dead_boards:
            raise OperationFailed(f"simulated: {ctx.name} is dead")
        rng = random.Random(f"{self.seed}:{ctx.name}:{ctx.operation_id}:{ctx.attempt}")
        if rng.random() < failure_rate:
            raise OperationFailed(f"simulated {ctx.kind} failure")

    def cycle(self, ctx: OperationContext) -> Mapping[str, Any]:
        down = self.controller_down(ctx)
        if down:
            raise OperationFailed(f"simulated: controller {down} does not answer")
        self._roll(ctx, self.rates.power_cycle_failure)
        return {"simulated": True}

    def ping(self, ctx: OperationContext) -> Mapping[str, Any]:
        self._roll(ctx, self.rates.ping_failure)
        return {"simulated": True, "rtt_ms": 0.4}

    def poll(self, ctx: OperationContext) -> Mapping[str, Any]:
        self._roll(ctx, self.rates.poll_failure)
        return {"simulated": True}

    def boot_local(self, ctx: OperationContext) -> Mapping[str, Any]:
        return {"simulated": True}

    def write(self, ctx: OperationContext) -> Mapping[str, Any]:
        self._roll(ctx, self.rates.pxe_failure)
        return {"simulated": True, "release": (ctx.payload.get("event_payload") or {}).get(
            "release") if isinstance(ctx.payload.get("event_payload"), dict) else None}
