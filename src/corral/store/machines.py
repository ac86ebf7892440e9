"""Machines: the rows every board, pool and job lives in, locked, claimed
when due, created, listed and rewritten by the events that move them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, tuple_, update

from corral.store.repository import Repository, new_id
from corral.store.schema import machines
from corral.store.values import MachineRow, MachineState, StateChange, VarsChange

STATE_COLUMNS = (
    machines.c.id,
    machines.c.kind,
    machines.c.name,
    machines.c.state,
    machines.c.state_entered_at,
    machines.c.deadline,
    machines.c.counters,
    machines.c.epoch,
)
MACHINE_COLUMNS = (*STATE_COLUMNS, machines.c.attrs, machines.c.created_at,
                   machines.c.updated_at, machines.c.vars)

_select_machine = select(*MACHINE_COLUMNS).where(
    machines.c.kind == bindparam("kind"), machines.c.name == bindparam("name"))
_select_machine_by_id = select(*MACHINE_COLUMNS).where(machines.c.id == bindparam("id"))
_lock_machine = select(*STATE_COLUMNS).where(
    machines.c.kind == bindparam("kind"), machines.c.name == bindparam("name")
).with_for_update()
_update_machine = (
    update(machines)
    .where(machines.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        state_entered_at=bindparam("b_state_entered_at"),
        deadline=bindparam("b_deadline"),
        counters=bindparam("b_counters"),
        epoch=bindparam("b_epoch"),
        updated_at=bindparam("b_updated_at"),
    )
)


class Machines(Repository):
    """The ``machines`` table."""

    def get(self, kind: str, name: str) -> MachineRow | None:
        row = self.conn.execute(_select_machine, {"kind": kind, "name": name}).first()
        return MachineRow.from_row(row) if row else None

    def get_by_id(self, machine_id: int) -> MachineRow | None:
        row = self.conn.execute(_select_machine_by_id, {"id": machine_id}).first()
        return MachineRow.from_row(row) if row else None

    def lock(self, kind: str, name: str) -> MachineState | None:
        """Read a machine's state and lock its row until the transaction ends."""
        row = self.conn.execute(_lock_machine, {"kind": kind, "name": name}).first()
        return MachineState.from_row(row) if row else None

    def lock_by_id(self, machine_id: int) -> MachineState | None:
        row = self.conn.execute(
            select(*STATE_COLUMNS).where(machines.c.id == machine_id).with_for_update()
        ).first()
        return MachineState.from_row(row) if row else None

    def lock_many(self, keys: Sequence[tuple[str, str]]) -> list[MachineState]:
        """Lock several machines, in id order (so two callers never deadlock)."""
        query = (select(*STATE_COLUMNS)
                 .where(tuple_(machines.c.kind, machines.c.name).in_(list(keys)))
                 .order_by(machines.c.id).with_for_update())
        return [MachineState.from_row(r) for r in self.conn.execute(query)]

    def claim_due(self, now: datetime, limit: int) -> list[MachineState]:
        """Lock up to ``limit`` machines whose deadline has passed.

        Rows another transaction holds are skipped (``SKIP LOCKED``), so any
        number of sweepers can share a database and each due row is claimed
        by one.
        """
        query = (select(*STATE_COLUMNS).where(machines.c.deadline <= now)
                 .order_by(machines.c.deadline).limit(limit)
                 .with_for_update(skip_locked=True))
        return [MachineState.from_row(r) for r in self.conn.execute(query)]

    def insert(self, *, kind: str, name: str, state: str, attrs: Mapping[str, Any],
               now: datetime, deadline: datetime | None) -> int:
        return new_id(self.conn.execute(insert(machines), {
            "kind": kind, "name": name, "state": state, "state_entered_at": now,
            "deadline": deadline, "counters": {}, "epoch": 1, "attrs": dict(attrs),
            "created_at": now, "updated_at": now, "vars": {}}))

    def update_attrs(self, machine_id: int, attrs: Mapping[str, Any], now: datetime) -> None:
        self.conn.execute(update(machines).where(machines.c.id == machine_id)
                          .values(attrs=dict(attrs), updated_at=now))

    def list(self, kind: str, *, states: Sequence[str] | None = None,
             names: Sequence[str] | None = None, after: str | None = None,
             limit: int | None = None) -> list[MachineRow]:
        """Machines of ``kind`` (named ``names``) by name; a page is the
        ``limit`` names after ``after`` (keyset paging on the unique (kind,
        name) index)."""
        query = select(*MACHINE_COLUMNS).where(machines.c.kind == kind)
        if states is not None:
            query = query.where(machines.c.state.in_(list(states)))
        if names is not None:
            if not names:
                return []
            query = query.where(machines.c.name.in_(list(names)))
        if after is not None:
            query = query.where(machines.c.name > after)
        query = query.order_by(machines.c.name)
        if limit is not None:
            query = query.limit(limit)
        return [MachineRow.from_row(r) for r in self.conn.execute(query)]

    def set_deadline(self, machine_id: int, deadline: datetime | None) -> None:
        """Move the deadline of a locked machine (a lease's heartbeat)."""
        self.conn.execute(update(machines).where(machines.c.id == machine_id)
                          .values(deadline=deadline))

    def vars(self, machine_id: int) -> dict[str, Any]:
        value = self.conn.execute(select(machines.c.vars)
                                  .where(machines.c.id == machine_id)).scalar()
        return dict(value or {})

    def update(self, changes: Sequence[StateChange]) -> None:
        """Write the new state of one or many locked machine rows."""
        if not changes:
            return
        self.conn.execute(_update_machine, [
            {"b_id": c.id, "b_state": c.state, "b_state_entered_at": c.state_entered_at,
             "b_deadline": c.deadline, "b_counters": dict(c.counters), "b_epoch": c.epoch,
             "b_updated_at": c.updated_at}
            for c in changes])

    def update_vars(self, changes: Sequence[VarsChange]) -> None:
        """Apply vars changes in order (read, merge, write: the rows are locked)."""
        for change in changes:
            merged = dict(change.values)
            if not change.replace:
                current = self.conn.execute(select(machines.c.vars)
                                            .where(machines.c.id == change.id)).scalar()
                merged = dict(current or {}) | merged
            self.conn.execute(update(machines).where(machines.c.id == change.id)
                              .values(vars=merged))
