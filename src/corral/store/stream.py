"""The history stream's reads: rows after a cursor in id order, and the
horizon up to which every row has settled (committed or rolled back), so
that a reader that moves past an id never misses a row that commits late.

The horizon is the dialect's concern: SQLite has one writer at a time, so
every visible id is settled; PostgreSQL lists the transactions that may
still hold ids (``postgres.py``); MariaDB and MySQL take ids from a counter
in commit order, so its committed value is the horizon (``mysql.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from corral.store.repository import Repository
from corral.store.schema import history, machines
from corral.store.values import HistoryEntry, StreamEntry


class Stream(Repository):
    """Reads of ``history`` joined to its machines, for the event stream."""

    def read(self, *, after: int, upto: int, limit: int,
             filters: Mapping[str, Sequence[str]]) -> list[StreamEntry]:
        """History rows with ``after < id <= upto`` in id order, with their
        machine's kind and name; ``filters`` keeps those whose ``kind``,
        ``name``, ``state`` (the state entered), ``event`` or ``source`` is
        among the given."""
        columns = {"kind": machines.c.kind, "name": machines.c.name,
                   "state": history.c.to_state, "event": history.c.event,
                   "source": history.c.source}
        query = (select(history, machines.c.kind.label("machine_kind"),
                        machines.c.name.label("machine_name"))
                 .join(machines, machines.c.id == history.c.machine_id)
                 .where(history.c.id > after, history.c.id <= upto))
        for key, wanted in filters.items():
            if wanted:
                query = query.where(columns[key].in_(list(wanted)))
        result = []
        for row in self.conn.execute(query.order_by(history.c.id).limit(limit)):
            fields = dict(row._mapping)
            kind, name = fields.pop("machine_kind"), fields.pop("machine_name")
            result.append(StreamEntry(entry=HistoryEntry(**fields), kind=kind, name=name))
        return result

    def horizon_candidate(self) -> tuple[int, Any]:
        """The newest history id that may exist, and what must finish before
        every row up to it has committed (None: nothing). Here (one writer at
        a time, ids given in its transaction) every visible id is settled."""
        newest = select(func.coalesce(func.max(history.c.id), 0))
        return int(self.conn.execute(newest).scalar_one()), None

    def settled(self, pending: Any) -> bool:
        """Whether what :meth:`horizon_candidate` named has finished."""
        return True
