"""Running a health check: the ``health_check`` operation (docs/health.md).

The steps of the board's definition run in order with what Corral already
drives (the board's power, netboot and ping/poll backends), each until it
works or its timeout runs out: a ping that fails while the board boots is
tried again. The first step that does not work ends the check; its
operation reports ``health_check_failed`` with the step, whether it is a
hard fault, the shared equipment it went through and the image, and the
health pass judges it. A netbooted check boots the local disk again after.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.health.definitions import (
    CallbackStep,
    ConsoleStep,
    Definition,
    Definitions,
    NetbootStep,
)
from corral.operations.base import Handler, OperationContext, OperationFailed
from corral.power.settings import controller_of
from corral.store.port import Store

# What a step's failure goes through: the power controller (by the name
# `corral.power` serializes its commands under), the netboot server.
NETBOOT = "netboot"


def equipment_of(step: str, attrs: Mapping[str, Any]) -> str | None:
    """The shared equipment a failure at ``step`` may be blamed on."""
    if step == "power_cycle":
        power = attrs.get("power")
        settings: Mapping[str, Any] = power if isinstance(power, dict) else {}
        driver = settings.get("driver")
        controller = controller_of(driver if isinstance(driver, str) else "default", settings)
        return f"controller:{controller}" if controller else None
    if step in ("netboot", "callback"):
        return NETBOOT
    return None


class StepFailed(Exception):
    pass


class Stopping(Exception):
    """Transient: the operation is retried."""


@dataclasses.dataclass(kw_only=True)
class HealthSteps:
    """The ``health_check`` operation's handler.

    Args:
        store: where the board's reports (callback steps) are read.
        definitions: the health check definitions.
        handlers: the board's operation backends (power, ping, poll, PXE).
        timeout_scale: the engine's (a step's timeout is scaled like a state's).
        console: whether a console pattern appeared (board, pattern, since:
            when the check began); None where no capture runs.
    """

    store: Store
    definitions: Definitions
    handlers: Mapping[str, Handler]
    timeout_scale: float = 1.0
    console: Callable[[str, str, datetime], bool] | None = None
    pause: float = 1.0
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    # The check's operation lease is renewed for this long at every try, so
    # that a dead process's check is taken over within it, and a live one's
    # never is.
    lease_seconds: float | None = None

    def stop(self) -> None:
        """End running checks at their next try (the process stops): each
        is put back in the outbox and runs again, whole, elsewhere or after
        the restart."""
        self.stopping.set()

    def __call__(self, ctx: OperationContext) -> Mapping[str, Any]:
        definition = self.definitions.of(ctx.name, ctx.attrs)
        with self.store.unit() as tx:
            health = tx.health.board(ctx.name) or {}
            machine = tx.machines.get("board", ctx.name)
            newest = tx.history.newest_of(machine.id) if machine else None
            since = newest.id if newest else 0
            began = newest.at if newest else datetime.now(UTC)
        image = definition.image(int(health.get("attempt") or 0))
        netbooted = False
        try:
            for index, step in enumerate(definition.steps):
                try:
                    netbooted |= isinstance(step, NetbootStep)
                    self._run(ctx, definition, index, image, (since, began))
                except StepFailed as failed:
                    raise OperationFailed(
                        f"{step.step}: {failed}", check=definition.name, step=step.step,
                        index=index, hard=step.hard, image=image,
                        equipment=equipment_of(step.step, ctx.attrs)) from None
        finally:
            if netbooted:
                self._try("boot_local", self._ctx(ctx, "boot_local", 99, 0, image))
        return {"check": definition.name, "image": image, "steps": len(definition.steps)}

    def _ctx(self, ctx: OperationContext, kind: str, index: int, attempt: int,
             image: str | None, payload: Mapping[str, Any] | None = None) -> OperationContext:
        # A distinct attempt per step and try: backends that deduplicate by
        # (operation, attempt) see each as its own request.
        return dataclasses.replace(
            ctx, kind=kind, attempt=ctx.attempt * 100000 + index * 1000 + attempt,
            payload=dict(payload or {}),
            vars={**ctx.vars, **({"release": image} if image else {})})

    def _try(self, kind: str, ctx: OperationContext) -> str | None:
        """Run one backend call; the reason it failed, or None."""
        handler = self.handlers.get(kind)
        if handler is None:
            return f"no backend runs {kind}"
        try:
            handler(ctx)
        except OperationFailed as exc:
            return exc.reason
        except Exception as exc:  # a transient error is a failed try here
            return f"{type(exc).__name__}: {exc}"
        return None

    def _run(self, ctx: OperationContext, definition: Definition, index: int,
             image: str | None, since: tuple[int, datetime]) -> None:
        step = definition.steps[index]
        deadline = time.monotonic() + step.timeout * self.timeout_scale
        attempt = 0
        why = "never ran"
        while True:
            attempt += 1
            self._renew(ctx)
            why = self._once(ctx, step, index, attempt, image, since) or ""
            if not why:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"{why} (for {step.timeout} s)")
            if self.stopping.wait(min(self.pause, left)):
                raise Stopping("the process is stopping; the check runs again")
            if time.monotonic() >= deadline:  # no try after the step's timeout
                raise StepFailed(f"{why} (for {step.timeout} s)")

    def _renew(self, ctx: OperationContext) -> None:
        if self.lease_seconds is not None:
            with self.store.unit() as tx:
                tx.operations.renew(ctx.operation_id, datetime.now(UTC) + timedelta(
                    seconds=self.lease_seconds))

    def _once(self, ctx: OperationContext, step: Any, index: int, attempt: int,
              image: str | None, since: tuple[int, datetime]) -> str | None:
        """One try of ``step``; why it did not work, or None. ``since``: the
        history id and the time the check began."""
        if isinstance(step, NetbootStep):
            release = image or step.release
            for kind, payload in (("write_pxe_config", {}),
                                  ("set_boot_device", {"device": "network"}),
                                  ("power_cycle", {})):
                why = self._try(kind, self._ctx(ctx, kind, index, attempt, release, payload))
                if why:
                    return why
            return None
        if isinstance(step, CallbackStep):
            with self.store.unit() as tx:
                machine = tx.machines.get("board", ctx.name)
                heard = machine is not None and tx.history.reported_since(
                    machine.id, since[0], step.event)
            return None if heard else f"the board did not report {step.event}"
        if isinstance(step, ConsoleStep):
            if self.console is None:
                return "no console capture runs for this board"
            return None if self.console(ctx.name, step.pattern, since[1]) else (
                f"{step.pattern!r} did not appear on its console")
        return self._try(step.step, self._ctx(ctx, step.step, index, attempt, image))
