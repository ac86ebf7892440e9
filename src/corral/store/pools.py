"""Pool assignments: which job holds which pool. The primary key refuses a
second holder; idle pools are locked with ``SKIP LOCKED`` so racing
acquirers take different ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from corral.store.machines import STATE_COLUMNS
from corral.store.repository import Repository
from corral.store.schema import machines, pool_assignments
from corral.store.values import Assignment, MachineState


def _assignment(row: Any) -> Assignment:
    return Assignment(pool=row.cb_pool_name, job_run_id=row.job_run_id,
                      assigned_at=row.assigned_at)


class Pools(Repository):
    """The ``pool_assignments`` table, and the pool machines it points at."""

    def holder(self, pool: str) -> str | None:
        """The job holding ``pool``, if any."""
        return self.conn.execute(select(pool_assignments.c.job_run_id)
                                 .where(pool_assignments.c.cb_pool_name == pool)).scalar()

    def assign(self, pool: str, job_run_id: str, now: datetime) -> None:
        """Record that ``job_run_id`` holds ``pool`` (the caller also holds
        the pool machine's row lock)."""
        self.conn.execute(insert(pool_assignments), {
            "cb_pool_name": pool, "job_run_id": job_run_id, "assigned_at": now})

    def unassign(self, pools: Sequence[str], job_run_id: str) -> int:
        result = self.conn.execute(pool_assignments.delete().where(
            pool_assignments.c.cb_pool_name.in_(list(pools)),
            pool_assignments.c.job_run_id == job_run_id))
        return int(result.rowcount)

    def assignments(self, *, job_run_id: str | None = None) -> list[Assignment]:
        query = select(pool_assignments).order_by(pool_assignments.c.cb_pool_name)
        if job_run_id is not None:
            query = query.where(pool_assignments.c.job_run_id == job_run_id)
        return [_assignment(r) for r in self.conn.execute(query)]

    def lock_idle(self, *, kind: str, state: str, attrs: Mapping[str, str],
                  limit: int) -> list[MachineState]:
        """Lock up to ``limit`` machines of ``kind`` in ``state`` whose attrs
        match and that no job holds, skipping rows another transaction has
        locked."""
        held = select(pool_assignments.c.cb_pool_name).where(
            pool_assignments.c.cb_pool_name == machines.c.name)
        query = select(*STATE_COLUMNS).where(machines.c.kind == kind,
                                             machines.c.state == state, ~held.exists())
        for key, value in attrs.items():
            query = query.where(machines.c.attrs[key].as_string() == value)
        query = query.order_by(machines.c.name).limit(limit).with_for_update(skip_locked=True)
        return [MachineState.from_row(r) for r in self.conn.execute(query)]
