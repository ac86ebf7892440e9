"""Idempotency keys: the outcome of a request kept with its (scope, key), so
a repeat is answered with it instead of firing again; forgotten after a
while."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, tuple_

from corral.store.repository import Repository
from corral.store.schema import idempotency_keys

_key = tuple_(idempotency_keys.c.scope, idempotency_keys.c.key)


class Idempotency(Repository):
    """The ``idempotency_keys`` table."""

    def outcomes(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """Stored outcomes of earlier requests, by (scope, key)."""
        if not keys:
            return {}
        rows = self.conn.execute(
            select(idempotency_keys.c.scope, idempotency_keys.c.key,
                   idempotency_keys.c.outcome).where(_key.in_(list(keys))))
        return {(scope, key): outcome for scope, key, outcome in rows}

    def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.conn.execute(insert(idempotency_keys), list(rows))

    def delete_before(self, cutoff: datetime, limit: int) -> int:
        """Forget up to ``limit`` of the oldest keys stored before ``cutoff``.

        Rows another transaction holds are skipped (``SKIP LOCKED``), so
        several workers expiring at once neither wait for each other nor
        collide. The keys are read first, then deleted by key: MariaDB and
        MySQL take no ``LIMIT`` in an ``IN`` subquery.
        """
        keys = [tuple(r) for r in self.conn.execute(
            select(idempotency_keys.c.scope, idempotency_keys.c.key)
            .where(idempotency_keys.c.created_at < cutoff)
            .order_by(idempotency_keys.c.created_at).limit(limit)
            .with_for_update(skip_locked=True))]
        if not keys:
            return 0
        return int(self.conn.execute(delete(idempotency_keys).where(_key.in_(keys))).rowcount)
