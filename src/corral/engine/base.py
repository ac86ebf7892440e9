"""What every part of the engine shares: the store, the definitions, the
clock, the observer, and how a transition is logged."""

from __future__ import annotations

from typing import Any

import structlog

from corral.engine.events import Clock, FireResult, Observer
from corral.errors import UnknownMachine
from corral.machines import MachineSet, StateMachine
from corral.store.port import EventTx, Store
from corral.store.values import MachineState

log = structlog.get_logger("corral.engine")


class EngineBase:
    store: Store
    machines: MachineSet
    clock: Clock
    timeout_scale: float
    observer: Observer

    def machine(self, kind: str) -> StateMachine:
        return self.machines[kind]

    def _lock(self, tx: EventTx, kind: str, name: str) -> MachineState:
        row = tx.lock_machine(kind, name)
        if row is None:
            raise UnknownMachine(kind, name)
        return row

    def _log(self, result: FireResult, source: str, **extra: Any) -> None:
        log.info("transition", **{result.kind: result.name}, from_state=result.from_state,
                 to_state=result.to_state, _event=result.event, source=source,
                 epoch=result.epoch, **extra)
