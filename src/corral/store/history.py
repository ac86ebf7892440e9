"""History: every transition a machine took, appended in the event's
transaction, read newest first, and pruned by retention (each machine keeps
its newest row, so its current state stays explained)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select

from corral.store.repository import Repository
from corral.store.schema import history
from corral.store.values import HistoryEntry

_insert_history = insert(history)


class History(Repository):
    """The ``history`` table."""

    def insert(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append history rows (keys are the ``history`` columns except ``id``)."""
        if entries:
            self.conn.execute(_insert_history, list(entries))

    def list(self, machine_id: int, *, limit: int = 100,
             before_id: int | None = None) -> list[HistoryEntry]:
        """The newest ``limit`` entries, newest first; page with ``before_id``."""
        query = select(history).where(history.c.machine_id == machine_id)
        if before_id is not None:
            query = query.where(history.c.id < before_id)
        query = query.order_by(history.c.id.desc()).limit(limit)
        return [HistoryEntry.from_row(r) for r in self.conn.execute(query)]

    def newest_of(self, machine_id: int) -> HistoryEntry | None:
        """A machine's newest entry."""
        found = self.list(machine_id, limit=1)
        return found[0] if found else None

    def reported_since(self, machine_id: int, after_id: int, event: str) -> bool:
        """Whether the machine heard ``event`` after entry ``after_id``."""
        return self.conn.execute(
            select(history.c.id).where(history.c.machine_id == machine_id,
                                       history.c.id > after_id, history.c.event == event)
            .limit(1)).first() is not None

    def newest_id(self) -> int:
        return int(self.conn.execute(select(func.coalesce(func.max(history.c.id), 0)))
                   .scalar_one())

    def prune_batch(self, cutoff: datetime, *, after_id: int, limit: int
                    ) -> tuple[int, int | None]:
        """Delete history rows older than ``cutoff`` among the ``limit`` rows
        after ``after_id`` (in id order), keeping every machine's newest row.

        Returns how many were deleted and the id to continue after, or None
        when the rows reached ``cutoff`` (ids grow with time: nothing older is
        left).
        """
        rows = self.conn.execute(select(history.c.id, history.c.machine_id, history.c.at)
                                 .where(history.c.id > after_id).order_by(history.c.id)
                                 .limit(limit)).all()
        old = [(id_, machine_id) for id_, machine_id, at in rows if at < cutoff]
        reached = len(old) < len(rows) or len(rows) < limit
        doomed: list[int] = []
        if old:
            newest = dict(self.conn.execute(
                select(history.c.machine_id, func.max(history.c.id))
                .where(history.c.machine_id.in_(sorted({m for _, m in old})))
                .group_by(history.c.machine_id)).all())
            doomed = [id_ for id_, machine_id in old if newest.get(machine_id) != id_]
        deleted = 0
        if doomed:
            deleted = int(self.conn.execute(delete(history).where(history.c.id.in_(doomed)))
                          .rowcount)
        return deleted, None if reached else rows[-1][0]
