"""The board machine's power operations, run through each board's driver.

``power_cycle``, ``power_off`` and ``set_boot_device`` (network, once) go to
the driver the board's inventory names (``power: {driver: ...}``); a board
without one goes to the process-wide backend (simulated or command), so a
simulated lab can hold a few real boards. Each operation:

1. holds a slot of the board's controller (:mod:`corral.power.controllers`),
2. asks the driver, and
3. checks the answer: after a cycle or an on, the power state is read until
   it is on, for at most ``power_on_wait`` seconds; a board still off then is
   ``power_cycle_failed`` with what the controller reported.

The result's detail records what was asked and answered, and when, so the
history shows it. Errors keep the driver's classification: a refusal is a
definite failure, silence is retried by the outbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from corral.operations.base import Handler, OperationContext
from corral.power.base import (
    ON,
    UNKNOWN,
    PowerDriver,
    PowerFailed,
    PowerTarget,
    PowerUnavailable,
    missing_library,
)
from corral.power.controllers import ControllerSlots
from corral.power.settings import (
    concurrency_of,
    controller_of,
    power_on_wait_of,
    secret_reader,
    timeout_of,
)

log = structlog.get_logger("corral.power")
# How often the power state is read while waiting for a board to come on.
VERIFY_INTERVAL = 1.0


class PowerOperations:
    def __init__(self, drivers: Mapping[str, PowerDriver], *, default: str,
                 slots: ControllerSlots | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 verify_interval: float = VERIFY_INTERVAL) -> None:
        if default not in drivers:
            raise ValueError(f"default power driver {default!r} is not among {sorted(drivers)}")
        self.drivers = dict(drivers)
        self.default = default
        self.slots = slots
        self.sleep = sleep
        self.verify_interval = verify_interval

    def handlers(self) -> dict[str, Handler]:
        return {"power_cycle": self.power_cycle, "power_on": self.power_on,
                "power_off": self.power_off, "set_boot_device": self.set_boot_device}

    # ------------------------------------------------------------ operations

    def power_cycle(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self._run(ctx, "power_cycle", lambda d, t: d.power_cycle(t), expect_on=True)

    def power_on(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self._run(ctx, "power_on", lambda d, t: d.power_on(t), expect_on=True)

    def power_off(self, ctx: OperationContext) -> Mapping[str, Any]:
        return self._run(ctx, "power_off", lambda d, t: d.power_off(t), expect_on=False)

    def set_boot_device(self, ctx: OperationContext) -> Mapping[str, Any]:
        device = str(ctx.payload.get("device") or "network")
        persistent = bool(ctx.payload.get("persistent", False))

        def ask(driver: PowerDriver, target: PowerTarget) -> Mapping[str, Any]:
            if target.settings.get("set_boot_device") is False:
                return {"skipped": "the inventory leaves this board's boot device alone "
                                   "(set_boot_device: false)"}
            answer = driver.set_boot_device(target, device, persistent=persistent)
            if answer is None:
                return {"skipped": f"driver {self._name(ctx)} has no boot device to set"}
            return {**answer, "device": device, "persistent": persistent}

        return self._run(ctx, "set_boot_device", ask, expect_on=None)

    # ------------------------------------------------------------ the common path

    def _name(self, ctx: OperationContext) -> str:
        settings = ctx.attrs.get("power")
        named = settings.get("driver") if isinstance(settings, dict) else None
        return named if isinstance(named, str) else self.default

    def _run(self, ctx: OperationContext, action: str,
             ask: Callable[[PowerDriver, PowerTarget], Mapping[str, Any]],
             *, expect_on: bool | None) -> Mapping[str, Any]:
        name = self._name(ctx)
        driver = self.drivers.get(name)
        if driver is None:
            raise PowerFailed(f"board {ctx.name} names power driver {name!r}, which this "
                              f"engine does not have ({', '.join(sorted(self.drivers))})")
        missing = missing_library(name, getattr(driver, "needs", ()))
        if missing is not None:
            # Definite: retrying cannot install it (serve refuses such boards
            # at start-up; this covers a library removed while it runs).
            raise PowerFailed(f"board {ctx.name}: {missing}")
        raw = ctx.attrs.get("power")
        settings: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
        target = PowerTarget(ctx=ctx, settings=settings, secret=secret_reader(ctx.name,
                                                                               settings))
        controller = controller_of(name, settings)
        bound = log.bind(board=ctx.name, operation_id=ctx.operation_id, driver=name,
                         action=action, controller=controller)
        started = _now()
        if controller is None or self.slots is None:
            detail = self._ask(driver, target, ask, expect_on)
        else:
            # Long enough for every request of the command, its pause and the
            # wait for power (each read of the state may take a timeout too).
            delay = settings.get("cycle_delay", 0)
            seconds = (timeout_of(settings) * 6 + 2 * power_on_wait_of(settings)
                       + (float(delay) if isinstance(delay, int | float) else 0.0) + 30)
            holder = f"operation {ctx.operation_id} attempt {ctx.attempt}"
            with self.slots.hold(controller, slots=concurrency_of(settings), holder=holder,
                                 seconds=seconds):
                command_started = _now()
                detail = self._ask(driver, target, ask, expect_on)
                detail = {**detail, "command_started_at": command_started.isoformat(),
                          "command_finished_at": _now().isoformat()}
        bound.info("power_answered", **{k: v for k, v in detail.items()
                                        if k in ("asked", "state", "skipped")})
        return {"driver": name, **({"controller": controller} if controller else {}),
                **detail, "started_at": started.isoformat()}

    def _ask(self, driver: PowerDriver, target: PowerTarget,
             ask: Callable[[PowerDriver, PowerTarget], Mapping[str, Any]],
             expect_on: bool | None) -> dict[str, Any]:
        detail = dict(ask(driver, target))
        if expect_on is None or not driver.reports_state or "skipped" in detail:
            return detail
        goal = ON if expect_on else "off"
        state = self._wait_for(driver, target, goal)
        detail["state"] = state
        if state != goal:
            raise PowerFailed(f"board {target.name} is {state}, not {goal}, "
                              f"{power_on_wait_of(target.settings):g} s after "
                              f"{detail.get('asked', 'the command')} (the controller reports "
                              f"its power as {state})", **detail)
        return detail

    def _wait_for(self, driver: PowerDriver, target: PowerTarget, goal: str) -> str:
        """Read the power state until it is ``goal`` or power_on_wait is over."""
        deadline = time.monotonic() + power_on_wait_of(target.settings)
        state = UNKNOWN
        while True:
            try:
                state = driver.power_state(target)
            except (PowerUnavailable, PowerFailed):
                # A BMC busy with the reset answers late or refuses for a
                # moment: the command worked, so keep reading until the end.
                state = UNKNOWN
            if state == goal or time.monotonic() >= deadline:
                return state
            self.sleep(self.verify_interval)


def _now() -> datetime:
    return datetime.now(UTC)
