"""Runs outbox operations: lease with SKIP LOCKED, run outside any row lock,
report the result back as an event.

A worker that dies mid-operation simply stops renewing nothing: its lease
expires and another worker (or the same one after restart) claims the
operation again. Transient errors are retried with exponential backoff up to
``max_attempts``; after that the machine hears ``<kind>_failed``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import structlog

from corral.engine.core import Engine
from corral.operations.base import Handler, OperationContext, OperationFailed, Reported
from corral.store.values import Kinds, OperationRow

log = structlog.get_logger("corral.worker")


class OperationWorker:
    def __init__(
        self,
        engine: Engine,
        handlers: Mapping[str, Handler],
        *,
        owner: str,
        threads: int = 8,
        lease_seconds: float = 120.0,
        max_attempts: int = 5,
        retry_delay: float = 5.0,
        kinds: Kinds = None,
    ) -> None:
        self.engine = engine
        self.handlers = dict(handlers)
        self.owner = owner
        self.threads = threads
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        # Which operation kinds it runs (a health check holds a thread for
        # minutes, so health checks have a worker of their own).
        self.kinds = kinds
        self._executor: ThreadPoolExecutor | None = None
        self._busy = 0
        self._lock = threading.Lock()

    # -------------------------------------------------------------- scheduling

    def dispatch(self) -> int:
        """Lease as many operations as there are idle threads and start them."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="corral-op")
        with self._lock:
            free = self.threads - self._busy
        if free <= 0:
            return 0
        ops = self.engine.outbox.lease_operations(owner=self.owner, limit=free,
                                           lease_seconds=self.lease_seconds, kinds=self.kinds)
        for op in ops:
            with self._lock:
                self._busy += 1
            self._executor.submit(self._run_and_release, op)
        return len(ops)

    def run_pending(self, *, limit: int = 100) -> int:
        """Lease and run operations in this thread until none is runnable now."""
        done = 0
        while True:
            ops = self.engine.outbox.lease_operations(owner=self.owner, limit=limit,
                                               lease_seconds=self.lease_seconds, kinds=self.kinds)
            if not ops:
                return done
            for op in ops:
                self.run(op)
            done += len(ops)

    def shutdown(self, *, wait: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None

    def _run_and_release(self, op: OperationRow) -> None:
        try:
            self.run(op)
        except Exception:
            log.exception("operation_crashed", operation_id=op.id, kind=op.kind)
        finally:
            with self._lock:
                self._busy -= 1

    # -------------------------------------------------------------- one operation

    def run(self, op: OperationRow) -> None:
        """Run one leased operation and report its result."""
        bound = log.bind(operation_id=op.id, kind=op.kind, target=op.target, attempt=op.attempts)
        if op.attempts > self.max_attempts:
            reason = f"gave up after {op.attempts - 1} attempts"
            bound.warning("operation_abandoned", reason=reason)
            self.engine.outbox.report_operation(op, ok=False, error=reason)
            return
        handler = self.handlers.get(op.kind)
        if handler is None:
            self.engine.outbox.report_operation(op, ok=False,
                                         error=f"no backend runs operations of kind {op.kind!r}")
            return
        machine = self.engine.outbox.machine_by_id(op.machine_id)
        if machine is None:
            return
        if machine.epoch != op.machine_epoch:
            # The machine has left the state entry that wrote this operation
            # (an operator forced it on, say): do not touch the hardware for it.
            self.engine.outbox.report_operation(op, ok=False, error="not run: the machine has left "
                                         "the state that asked for it")
            return
        ctx = OperationContext(operation_id=op.id, kind=op.kind, machine_kind=machine.kind,
                               name=machine.name, attrs=machine.attrs, payload=op.payload,
                               attempt=op.attempts, vars=machine.vars or {})
        bound.debug("operation_started")
        try:
            detail = handler(ctx)
        except OperationFailed as failure:
            self.engine.outbox.report_operation(op, ok=False, detail=failure.detail,
                                         error=failure.reason)
            return
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if op.attempts >= self.max_attempts:
                self.engine.outbox.report_operation(op, ok=False, error=error)
            else:
                delay = self.retry_delay * 2 ** (op.attempts - 1)
                self.engine.outbox.retry_operation(op, delay=delay, error=error)
            return
        if isinstance(detail, Reported):
            self.engine.outbox.report_operation(op, ok=True, detail=detail.detail,
                                         outcome=detail.outcome)
            return
        self.engine.outbox.report_operation(op, ok=True, detail=detail)
