"""Webhook subscriptions: each follows the history with its own cursor, and
one process at a time delivers it (a lease), so its events go out in order."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, update

from corral.store.repository import Repository
from corral.store.schema import webhooks

_PUBLIC_COLUMNS = [c for c in webhooks.c if c.name != "secret"]


class Webhooks(Repository):
    """The ``webhooks`` table."""

    def add(self, *, name: str, url: str, filters: Mapping[str, Any], secret: str,
            cursor: int, now: datetime) -> None:
        """Raises: DuplicateKey (through the store) when the name is taken."""
        self.conn.execute(insert(webhooks).values(
            name=name, url=url, filters=dict(filters), secret=secret, cursor=cursor,
            delivered=0, status="ok", failures=0, last_error=None, next_attempt_at=now,
            lease_owner=None, lease_until=None, created_at=now))

    def remove(self, name: str) -> bool:
        return int(self.conn.execute(delete(webhooks).where(webhooks.c.name == name))
                   .rowcount) == 1

    def claim(self, *, now: datetime, owner: str, until: datetime, limit: int
              ) -> list[dict[str, Any]]:
        """Lease up to ``limit`` subscriptions due for delivery (with their
        secrets)."""
        ids = [r[0] for r in self.conn.execute(
            select(webhooks.c.id)
            .where(webhooks.c.next_attempt_at <= now,
                   or_(webhooks.c.lease_until.is_(None), webhooks.c.lease_until < now))
            .order_by(webhooks.c.next_attempt_at).limit(limit)
            .with_for_update(skip_locked=True))]
        if not ids:
            return []
        self.conn.execute(update(webhooks).where(webhooks.c.id.in_(ids))
                          .values(lease_owner=owner, lease_until=until))
        rows = self.conn.execute(select(webhooks).where(webhooks.c.id.in_(ids)))
        return [dict(r._mapping) for r in rows]

    def finish_pass(self, webhook_id: int, *, owner: str, cursor: int, delivered: int,
                    failures: int, status: str, last_error: str | None,
                    next_attempt_at: datetime) -> bool:
        """Record a delivery pass and give the lease back; False when the
        lease was lost (another process took over after it expired)."""
        result = self.conn.execute(
            update(webhooks)
            .where(webhooks.c.id == webhook_id, webhooks.c.lease_owner == owner)
            .values(cursor=cursor, delivered=webhooks.c.delivered + delivered,
                    failures=failures, status=status, last_error=last_error,
                    next_attempt_at=next_attempt_at, lease_owner=None, lease_until=None))
        return int(result.rowcount) == 1

    def list(self) -> list[dict[str, Any]]:
        """Every subscription, without its secret."""
        rows = self.conn.execute(select(*_PUBLIC_COLUMNS).order_by(webhooks.c.name))
        return [dict(r._mapping) for r in rows]
