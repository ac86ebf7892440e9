"""Jobs: the submitted spec and its bookkeeping beside the job's machine
row, and the queue of jobs waiting for pools."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from corral.store.repository import Repository, new_id
from corral.store.schema import jobs, machines


class Jobs(Repository):
    """The ``jobs`` table."""

    def insert(self, record: Mapping[str, Any]) -> str:
        """Store a submitted job; returns its name (``job-<id>``)."""
        job_id = new_id(self.conn.execute(insert(jobs), {"name": "pending", **record}))
        name = f"job-{job_id}"
        self.conn.execute(update(jobs).where(jobs.c.id == job_id).values(name=name))
        return name

    def get(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(jobs).where(jobs.c.name == name)).first()
        return dict(row._mapping) if row else None

    def queued(self, *, kind: str, state: str, limit: int) -> list[tuple[str, str | None]]:
        """(name, fabric) of the jobs whose machine is in ``state``, highest
        priority first, then oldest."""
        rows = self.conn.execute(
            select(jobs.c.name, jobs.c.fabric)
            .join(machines, (machines.c.kind == kind) & (machines.c.name == jobs.c.name))
            .where(machines.c.state == state)
            .order_by(jobs.c.priority.desc(), jobs.c.id).limit(limit))
        return [(name, fabric) for name, fabric in rows]

    def finish(self, name: str, *, comment: str | None, now: datetime) -> None:
        self.conn.execute(update(jobs).where(jobs.c.name == name)
                          .values(failure_comment=comment, finished_at=now))
