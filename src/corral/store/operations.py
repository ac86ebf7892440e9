"""Operations: the outbox. Rows written with the transitions that need them,
leased by workers (``SKIP LOCKED``, with a lease a dead worker loses),
finished or put back for a retry, and pruned once finished and old."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from corral.names import FINISHED_OPERATION_STATUSES, OPEN_OPERATION_STATUSES, OperationStatus
from corral.store.repository import Repository, aware
from corral.store.schema import operations
from corral.store.values import Kinds, OperationRow

_insert_operation = insert(operations)
_NEW_OPERATION = {"status": OperationStatus.PENDING.value, "attempts": 0, "lease_owner": None,
                  "lease_expires_at": None, "result": None, "error": None,
                  "finished_at": None}


class Operations(Repository):
    """The ``operations`` table."""

    def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write new outbox rows: each gives machine_id, machine_epoch, kind,
        target, payload and created_at; it is pending and runnable from
        created_at."""
        if rows:
            self.conn.execute(_insert_operation, [
                _NEW_OPERATION | dict(r) | {"run_after": r["created_at"]} for r in rows])

    def _claimable(self, now: datetime, limit: int, kinds: Kinds = None) -> Any:
        """The ids a lease may take: pending ones that are due, and running
        ones whose lease has expired (their worker died); of ``kinds`` only
        (``(False, kinds)``: of any other kind)."""
        query = (select(operations.c.id)
                 .where(or_(and_(operations.c.status == OperationStatus.PENDING,
                                 operations.c.run_after <= now),
                            and_(operations.c.status == OperationStatus.RUNNING,
                                 operations.c.lease_expires_at < now))))
        if kinds is not None:
            wanted, names = kinds
            column = operations.c.kind
            query = query.where(column.in_(names) if wanted else column.not_in(names))
        return query.order_by(operations.c.id).limit(limit).with_for_update(skip_locked=True)

    def _leased(self, ids: list[int], owner: str, lease_until: datetime) -> Any:
        return (update(operations).where(operations.c.id.in_(ids))
                .values(status=OperationStatus.RUNNING.value, lease_owner=owner,
                        lease_expires_at=lease_until, attempts=operations.c.attempts + 1))

    def lease(self, *, now: datetime, owner: str, lease_until: datetime,
              limit: int, kinds: Kinds = None) -> list[OperationRow]:
        """Claim operations to run (see ``_claimable`` for ``kinds``); each
        claim adds an attempt."""
        ids = [r[0] for r in self.conn.execute(self._claimable(now, limit, kinds))]
        if not ids:
            return []
        result = self.conn.execute(self._leased(ids, owner, lease_until)
                                   .returning(*operations.c))
        return sorted((OperationRow.from_row(r) for r in result), key=lambda op: op.id)

    def renew(self, operation_id: int, until: datetime) -> None:
        """Extend a running operation's lease (a long one, such as a health
        check, is still being worked on)."""
        self.conn.execute(update(operations).where(
            operations.c.id == operation_id,
            operations.c.status == OperationStatus.RUNNING.value).values(lease_expires_at=until))

    def lock(self, operation_id: int) -> OperationRow | None:
        row = self.conn.execute(select(operations).where(operations.c.id == operation_id)
                                .with_for_update()).first()
        return OperationRow.from_row(row) if row else None

    def finish(self, operation_id: int, *, status: str, result: Any, error: str | None,
               now: datetime) -> None:
        self.conn.execute(update(operations).where(operations.c.id == operation_id).values(
            status=status, result=result, error=error, finished_at=now, lease_owner=None,
            lease_expires_at=None))

    def retry(self, operation_id: int, *, run_after: datetime, error: str) -> None:
        """Put a leased operation back in the queue after a failed attempt."""
        self.conn.execute(update(operations).where(operations.c.id == operation_id).values(
            status=OperationStatus.PENDING.value, run_after=run_after, error=error,
            lease_owner=None, lease_expires_at=None))

    def list(self, machine_id: int, *, limit: int = 200) -> list[OperationRow]:
        """A machine's newest ``limit`` operations, newest first."""
        rows = self.conn.execute(select(operations)
                                 .where(operations.c.machine_id == machine_id)
                                 .order_by(operations.c.id.desc()).limit(limit))
        return [OperationRow.from_row(r) for r in rows]

    def queue(self) -> tuple[int, datetime | None]:
        """How many operations wait or run, and when the oldest was written."""
        count, oldest = self.conn.execute(
            select(func.count(), func.min(operations.c.created_at))
            .where(operations.c.status.in_(OPEN_OPERATION_STATUSES))).one()
        return int(count), None if oldest is None else aware(oldest)

    def prune_batch(self, cutoff: datetime, *, after_id: int, limit: int
                    ) -> tuple[int, int | None]:
        """Delete operations that finished before ``cutoff`` among the
        ``limit`` rows after ``after_id`` (in id order); pending and running
        ones stay. Returns how many were deleted and the id to continue
        after, or None once the rows reached operations written after
        ``cutoff``."""
        rows = self.conn.execute(
            select(operations.c.id, operations.c.status, operations.c.created_at,
                   operations.c.finished_at)
            .where(operations.c.id > after_id).order_by(operations.c.id).limit(limit)).all()
        doomed = [id_ for id_, status, _, finished in rows
                  if status in FINISHED_OPERATION_STATUSES and finished is not None
                  and finished < cutoff]
        reached = len(rows) < limit or any(created >= cutoff for _, _, created, _ in rows)
        deleted = 0
        if doomed:
            deleted = int(self.conn.execute(delete(operations)
                                            .where(operations.c.id.in_(doomed))).rowcount)
        return deleted, None if reached else rows[-1][0]
