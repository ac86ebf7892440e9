"""The outbox: operations written with their transitions are leased by
workers, run outside any lock, and their results come back as events.

A result for a state entry the machine has already left (its epoch moved on)
or a duplicate of a finished one is recorded on the operation and changes no
machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from corral.engine.events import FireResult
from corral.engine.planning import ignored
from corral.engine.transaction import Context, log, transaction
from corral.errors import NotFound
from corral.names import OPEN_OPERATION_STATUSES, OperationStatus, Source
from corral.store.values import Kinds, MachineRow, MachineState, OperationRow


class Outbox:
    """Operation leases for workers, and their results back as events."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.store = context.store
        self.clock = context.clock

    def lease_operations(self, *, owner: str, limit: int, lease_seconds: float,
                         kinds: Kinds = None) -> list[OperationRow]:
        """Claim up to ``limit`` runnable operations for ``owner`` (of
        ``kinds``, see :meth:`corral.store.operations.Operations.lease`)."""
        with self.store.unit() as tx:
            now = self.clock()
            return tx.operations.lease(now=now, owner=owner, limit=limit, kinds=kinds,
                                       lease_until=now + timedelta(seconds=lease_seconds))

    def queue(self) -> tuple[int, datetime | None]:
        """How many operations wait or run, and when the oldest was written."""
        with self.store.unit() as tx:
            return tx.operations.queue()

    def machine_by_id(self, machine_id: int) -> MachineRow | None:
        with self.store.unit() as tx:
            return tx.machines.get_by_id(machine_id)

    def retry_operation(self, op: OperationRow, *, delay: float, error: str) -> None:
        """Return a leased operation to the queue after a transient error."""
        with self.store.unit() as tx:
            current = tx.operations.lock(op.id)
            if current is None or current.status != OperationStatus.RUNNING:
                return
            tx.operations.retry(op.id, error=error,
                                run_after=self.clock() + timedelta(seconds=delay))
        log.info("operation_retry", operation_id=op.id, kind=op.kind, target=op.target,
                 attempts=op.attempts, error=error)
        self.context.observer.operation(op.kind, "retry")

    def report_operation(
        self, op: OperationRow, *, ok: bool, detail: Mapping[str, Any] | None = None,
        error: str | None = None, outcome: str | None = None,
    ) -> FireResult:
        """Feed an operation's result back as ``<kind>_ok`` / ``<kind>_failed``, or
        ``<kind>_<outcome>`` for a named outcome. The result document is the
        event's payload, so a transition may keep values from it (``vars``).

        One transaction: lock the machine, then the operation. A duplicate
        result (the operation already finished) or a stale one (the machine has
        left the state entry that wrote the operation) is recorded on the
        operation and changes no machine.
        """
        event = f"{op.kind}_{outcome or ('ok' if ok else 'failed')}"
        result_doc = {"ok": ok, **(dict(detail) if detail else {})}
        with transaction(self.context) as unit:
            tx = unit.tx
            row = tx.machines.lock_by_id(op.machine_id)
            if row is None:
                raise NotFound(f"operation {op.id} refers to a deleted machine")
            current = tx.operations.lock(op.id)
            if current is None or current.status not in OPEN_OPERATION_STATUSES:
                status = current.status if current else "missing"
                return ignored(row, event, f"operation {op.id} already {status}")
            note = self._stale(op, current, row, event)
            if note is not None:
                tx.operations.finish(op.id, status=OperationStatus.STALE, result=result_doc,
                                     error=error or note, now=unit.now)
                log.info("operation_result_ignored", operation_id=op.id, kind=op.kind,
                         target=op.target, _event=event, note=note)
                unit.after_commit(lambda: self.context.observer.operation(op.kind, "stale"))
                return ignored(row, event, note)
            unit.fire(row, event, source=Source.OPERATION, payload=result_doc, reason=error,
                      operation_id=op.id, observe=False)
            tx.operations.finish(op.id, status=OperationStatus.DONE if ok
                                 else OperationStatus.FAILED,
                                 result=result_doc, error=error, now=unit.now)
            unit.after_commit(lambda: self.context.observer.operation(
                op.kind, "ok" if ok else "failed"))
        return unit.results[-1]

    def _stale(self, op: OperationRow, current: OperationRow, row: MachineState,
               event: str) -> str | None:
        """Why a result changes no machine (None: it applies)."""
        if current.machine_epoch != row.epoch:
            return (f"stale: written at epoch {current.machine_epoch}, "
                    f"machine is at epoch {row.epoch} ({row.state})")
        if event not in self.context.machines[row.kind].allowed_events(row.state):
            return f"state {row.state!r} does not accept {event!r}"
        return None
