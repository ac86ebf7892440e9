"""A unit: one transaction in which a service changes its own tables and
fires events on the machines it locked (a pool's assignment row and its
``assign`` event, together)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from corral.engine.events import CREATE_EVENT, SOURCE_ROLES, FireResult
from corral.engine.planning import Write, deadline_after, final_changes, plan, write_args
from corral.errors import UnknownMachine
from corral.machines import MachineSet
from corral.payload import check_json, check_text
from corral.store.port import Tx
from corral.store.values import MachineState


class Unit:
    """A transaction opened by ``Engine.unit``: lock machines, fire events on
    them, and use ``tx`` (the store's transaction) for the caller's own tables."""

    def __init__(self, machines: MachineSet, tx: Tx, now: datetime, *,
                 timeout_scale: float = 1.0) -> None:
        self.machines = machines
        self.tx = tx
        self.now = now
        self.timeout_scale = timeout_scale
        self.writes: list[Write] = []

    def lock(self, kind: str, name: str) -> MachineState:
        """Raises: UnknownMachine."""
        self.machines[kind]
        row = self.tx.lock_machine(kind, name)
        if row is None:
            raise UnknownMachine(kind, name)
        return row

    def create(self, kind: str, name: str, attrs: Mapping[str, Any], *, actor: str | None,
               reason: str | None) -> MachineState:
        """Create a machine in its initial state; returns its (locked) row."""
        [row] = self.create_many(kind, {name: attrs}, actor=actor, reason=reason)
        return row

    def create_many(self, kind: str, inventory: Mapping[str, Mapping[str, Any]], *,
                    actor: str | None, reason: str | None) -> list[MachineState]:
        """Create machines in their initial state; their history and entry
        operations are written in one batch."""
        machine = self.machines[kind]
        outcome = machine.enter("", machine.initial, CREATE_EVENT, {})
        deadline = deadline_after(self.now, outcome.timeout, self.timeout_scale)
        writes, rows = [], []
        for name, attrs in inventory.items():
            machine_id = self.tx.insert_machine(kind=kind, name=name,
                                          state=machine.initial, attrs=attrs, now=self.now,
                                          deadline=deadline)
            placeholder = MachineState(id=machine_id, kind=kind, name=name, state="",
                                         state_entered_at=self.now, deadline=None,
                                         counters={}, epoch=0)
            write = plan(placeholder, outcome, now=self.now, source="operator", actor=actor,
                         reason=reason, payload=None, operation_id=None,
                         timeout_scale=self.timeout_scale)
            writes.append(write)
            rows.append(write.change.applied_to(placeholder))
        self.tx.write(*write_args(writes, [w.change for w in writes]))
        self.writes.extend(writes)
        return rows

    def fire(
        self, row: MachineState, event: str, *, source: str, payload: Any = None,
        actor: str | None = None, reason: str | None = None,
    ) -> MachineState:
        """Apply ``event`` to the locked ``row``, fired by the role of
        ``source``; returns the row as it is now.

        Raises:
            EventNotAllowed, Forbidden, InvalidRequest: nothing of the unit will
            commit unless the caller handles it.
        """
        machine = self.machines[row.kind]
        check_json(payload, "payload")
        check_text(reason, "reason")
        outcome = machine.compute(row.state, row.counters, event, name=row.name,
                                  payload=payload, role=SOURCE_ROLES[source])
        write = plan(row, outcome, now=self.now, source=source, actor=actor, reason=reason,
                     payload=payload, operation_id=None, timeout_scale=self.timeout_scale)
        self.tx.write(*write_args([write], final_changes([write])))
        self.writes.append(write)
        return write.change.applied_to(row)

    @property
    def results(self) -> list[FireResult]:
        return [w.result for w in self.writes]
