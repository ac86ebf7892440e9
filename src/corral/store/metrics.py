"""Monitoring reads: machines per kind and state (counted now, or the stored
aggregate that ``/metrics`` reads), and how long the oldest has been there."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, select

from corral.store.repository import Repository, aware
from corral.store.schema import machine_state_counts, machines

_counts = machine_state_counts.c
_by_state = (machines.c.kind, machines.c.state)


class Metrics(Repository):
    """Aggregates of ``machines`` and the ``machine_state_counts`` table."""

    def count_by_state(self) -> list[tuple[str, str, int]]:
        """(kind, state, count) for every populated state, computed now."""
        query = select(*_by_state, func.count()).group_by(*_by_state)
        return [(k, s, int(n)) for k, s, n in self.conn.execute(query)]

    def oldest_in_state(self) -> list[tuple[str, str, datetime]]:
        """(kind, state, when the machine longest in it entered it), now."""
        query = (select(*_by_state, func.min(machines.c.state_entered_at))
                 .group_by(*_by_state))
        return [(k, s, aware(t)) for k, s, t in self.conn.execute(query)]

    def refresh_state_counts(self, now: datetime) -> int:
        """Recount machines per (kind, state) into ``machine_state_counts``,
        with when the machine longest in each state entered it; returns how
        many (kind, state) rows it holds now."""
        query = (select(*_by_state, func.count(), func.min(machines.c.state_entered_at))
                 .group_by(*_by_state))
        counts = list(self.conn.execute(query))
        self.conn.execute(delete(machine_state_counts))
        if counts:
            self.conn.execute(insert(machine_state_counts), [
                {"kind": k, "state": s, "machines": int(n), "counted_at": now,
                 "oldest_entered_at": aware(t)} for k, s, n, t in counts])
        return len(counts)

    def stored_state_counts(self) -> tuple[list[tuple[str, str, int]], datetime | None]:
        """The last recount: (kind, state, machines) rows and when it ran
        (None: never)."""
        rows = self.conn.execute(select(_counts.kind, _counts.state, _counts.machines,
                                        _counts.counted_at)).all()
        counted = min((r[3] for r in rows), default=None)
        return [(k, s, int(n)) for k, s, n, _ in rows], counted

    def stored_oldest_in_state(self) -> list[tuple[str, str, datetime]]:
        """The last recount's (kind, state, oldest entry) rows."""
        rows = self.conn.execute(select(_counts.kind, _counts.state,
                                        _counts.oldest_entered_at)).all()
        return [(k, s, t) for k, s, t in rows if t is not None]
