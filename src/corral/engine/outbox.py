"""The outbox: operations written with their transitions are leased by
workers, run outside any lock, and their results come back as events.

A result for a state entry the machine has already left (its epoch moved on)
or a duplicate of a finished one is recorded on the operation and changes no
machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from corral.engine.base import EngineBase, log
from corral.engine.events import FireResult
from corral.engine.planning import final_changes, ignored, plan_event, write_args
from corral.errors import NotFound
from corral.store.values import MachineRow, OperationRow


class Outbox(EngineBase):
    def lease_operations(self, *, owner: str, limit: int, lease_seconds: float
                         ) -> list[OperationRow]:
        """Claim up to ``limit`` runnable operations for ``owner``."""
        with self.store.unit() as tx:
            now = self.clock()
            return tx.lease_operations(now=now, owner=owner, limit=limit,
                                      lease_until=now + timedelta(seconds=lease_seconds))

    def machine_by_id(self, machine_id: int) -> MachineRow | None:
        with self.store.unit() as tx:
            return tx.get_machine_by_id(machine_id)

    def retry_operation(self, op: OperationRow, *, delay: float, error: str) -> None:
        """Return a leased operation to the queue after a transient error."""
        with self.store.unit() as tx:
            current = tx.lock_operation(op.id)
            if current is None or current.status != "running":
                return
            tx.retry_operation(op.id, error=error,
                              run_after=self.clock() + timedelta(seconds=delay))
        log.info("operation_retry", operation_id=op.id, kind=op.kind, target=op.target,
                 attempts=op.attempts, error=error)
        self.observer.operation(op.kind, "retry")

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
        with self.store.unit() as tx:
            row = tx.lock_machine_by_id(op.machine_id)
            if row is None:
                raise NotFound(f"operation {op.id} refers to a deleted machine")
            current = tx.lock_operation(op.id)
            now = self.clock()
            if current is None or current.status not in ("pending", "running"):
                status = current.status if current else "missing"
                return ignored(row, event, f"operation {op.id} already {status}")
            machine = self.machines[row.kind]
            note = None
            if current.machine_epoch != row.epoch:
                note = (f"stale: written at epoch {current.machine_epoch}, "
                        f"machine is at epoch {row.epoch} ({row.state})")
            elif event not in machine.allowed_events(row.state):
                note = f"state {row.state!r} does not accept {event!r}"
            if note is not None:
                tx.finish_operation(op.id, status="stale", result=result_doc,
                                   error=error or note, now=now)
                log.info("operation_result_ignored", operation_id=op.id, kind=op.kind,
                         target=op.target, _event=event, note=note)
                self.observer.operation(op.kind, "stale")
                return ignored(row, event, note)
            write = plan_event(self.machines, row, event, now=now, source="operation",
                               role="operation", payload=result_doc, reason=error,
                               operation_id=op.id, timeout_scale=self.timeout_scale)
            tx.write(*write_args([write], final_changes([write])))
            tx.finish_operation(op.id, status="done" if ok else "failed",
                               result=result_doc, error=error, now=now)
        self._log(write.result, "operation", operation_id=op.id)
        self.observer.operation(op.kind, "ok" if ok else "failed")
        return write.result
