"""Boot resource imports: each import's run and what it published."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from corral.store.repository import Repository, new_id
from corral.store.schema import bootres_imports, bootres_published


class Bootres(Repository):
    """The ``bootres_imports`` and ``bootres_published`` tables."""

    def start_import(self, *, started_at: datetime, storage: str,
                     sources: Sequence[str]) -> int:
        return new_id(self.conn.execute(insert(bootres_imports), {
            "started_at": started_at, "status": "running", "storage": storage,
            "sources": list(sources)}))

    def end_import(self, import_id: int, *, status: str, snapshot: str | None,
                   error: str | None, now: datetime,
                   published: Sequence[Mapping[str, Any]]) -> None:
        self.conn.execute(update(bootres_imports).where(bootres_imports.c.id == import_id)
                          .values(status=status, snapshot=snapshot, error=error,
                                  finished_at=now))
        if published:
            self.conn.execute(insert(bootres_published),
                              [{"import_id": import_id, **row} for row in published])

    def imports(self, limit: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(select(bootres_imports).order_by(bootres_imports.c.id.desc())
                                 .limit(limit))
        return [dict(r._mapping) for r in rows]
