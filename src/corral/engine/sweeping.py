"""Sweeping: due deadlines fire ``timeout``, old idempotency keys are
forgotten, and (when asked) old history, finished operations and console
attempts are pruned.

Each sweep batch is one transaction: claim due rows with ``FOR UPDATE SKIP
LOCKED`` (so a due row fires exactly once however many engines sweep), plan
each row's timeout (:func:`corral.engine.planning.plan_timeout`), write them
all, commit.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial

from corral.engine.planning import Write, plan_timeout
from corral.engine.transaction import Context, log, transaction

STATE_COUNTS_LOCK = "corral_state_counts"


class Sweeper:
    """Due deadlines, the stored state counts, and retention."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.store = context.store
        self.clock = context.clock

    def refresh_state_counts(self) -> int:
        """Recount machines per kind and state into the stored aggregate that
        ``/metrics`` reads (one recount at a time across processes). Returns
        how many (kind, state) pairs are populated."""
        with self.store.unit() as tx:
            tx.lock_named(STATE_COUNTS_LOCK)
            return tx.metrics.refresh_state_counts(self.clock())

    def state_counts(self, *, max_age: float) -> tuple[list[tuple[str, str, int]], float | None]:
        """(kind, state, machines) for every populated state, and how old the
        figures are in seconds: the stored aggregate when it is at most
        ``max_age`` old, else counted now (age None)."""
        with self.store.unit() as tx:
            counts, counted_at = tx.metrics.stored_state_counts()
            age = (self.clock() - counted_at).total_seconds() if counted_at else None
            if age is not None and age <= max_age:
                return counts, age
            return tx.metrics.count_by_state(), None

    def oldest_in_state(self, *, max_age: float) -> list[tuple[str, str, float]]:
        """(kind, state, seconds the machine longest in it has been there), from
        the stored aggregate when it is at most ``max_age`` old, else now."""
        with self.store.unit() as tx:
            _counts, counted_at = tx.metrics.stored_state_counts()
            now = self.clock()
            fresh = counted_at is not None and (now - counted_at).total_seconds() <= max_age
            rows = tx.metrics.stored_oldest_in_state() if fresh else tx.metrics.oldest_in_state()
        return [(k, s, max(0.0, (now - t).total_seconds())) for k, s, t in rows]

    def prune(self, *, history_older_than: timedelta | None = None,
              operations_older_than: timedelta | None = None,
              consoles_older_than: timedelta | None = None, batch: int = 500
              ) -> dict[str, int]:
        """Delete history rows, finished operations and console attempts
        older than the given ages (None: keep them all). Every machine keeps
        its newest history row, so its current state stays explained, and
        every board its newest console attempt; pending and running
        operations stay whatever their age.

        Works through the tables in id order, ``batch`` rows per transaction:
        each deletes by primary key and commits at once, so no lock is held
        for long and events go on meanwhile. Returns how many rows went.
        """
        now = self.clock()
        pruned = {"history": 0, "operations": 0, "consoles": 0}
        for what, older in (("history", history_older_than),
                            ("operations", operations_older_than)):
            if not older:
                continue
            cutoff = now - older
            after: int | None = 0
            while after is not None:
                with self.store.unit() as tx:
                    step = (tx.history.prune_batch if what == "history"
                            else tx.operations.prune_batch)
                    deleted, after = step(cutoff, after_id=after, limit=batch)
                pruned[what] += deleted
            if pruned[what]:
                log.info("pruned", table=what, count=pruned[what], before=cutoff.isoformat())
        if consoles_older_than:
            cutoff = now - consoles_older_than
            while True:
                with self.store.unit() as tx:
                    deleted = tx.consoles.prune_batch(cutoff, limit=batch)
                pruned["consoles"] += deleted
                if deleted < batch:
                    break
            if pruned["consoles"]:
                log.info("pruned", table="console_attempts", count=pruned["consoles"],
                         before=cutoff.isoformat())
        return pruned

    def expire_idempotency_keys(self, older_than: timedelta, *, batch: int = 1000) -> int:
        """Forget idempotency keys stored more than ``older_than`` ago.

        A repeat of a forgotten key fires again, like a new request. Deletes in
        transactions of at most ``batch`` rows, so a large backlog never holds
        many locks or one long transaction. Returns how many were forgotten.
        """
        cutoff = self.clock() - older_than
        forgotten = 0
        while True:
            with self.store.unit() as tx:
                deleted = tx.idempotency.delete_before(cutoff, batch)
            forgotten += deleted
            if deleted < batch:
                break
        if forgotten:
            log.info("idempotency_keys_expired", count=forgotten, before=cutoff.isoformat())
        return forgotten

    def sweep_timeouts(
        self, *, batch: int = 500, max_batches: int | None = None, threads: int = 1
    ) -> int:
        """Fire ``timeout`` on every machine whose deadline has passed.

        Each batch is one transaction: claim due rows with ``FOR UPDATE SKIP
        LOCKED``, compute and write every outcome, commit. With ``threads`` > 1
        (PostgreSQL only) several batches are in flight at once, so one batch's
        commit overlaps the next one's computation. Returns how many timeouts
        fired.
        """
        if threads <= 1 or not self.store.concurrent_sweeps:
            return self._sweep_batches(batch, max_batches)
        with ThreadPoolExecutor(threads, thread_name_prefix="corral-sweep") as pool:
            runs = [pool.submit(self._sweep_batches, batch, max_batches) for _ in range(threads)]
            return sum(run.result() for run in runs)

    def _sweep_batches(self, batch: int, max_batches: int | None) -> int:
        fired = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            batches += 1
            with transaction(self.context, events=True) as unit:
                rows = unit.tx.machines.claim_due(unit.now, batch)
                plans = [plan_timeout(self.context.machines, row, unit.now,
                                      timeout_scale=self.context.timeout_scale)
                         for row in rows]
                writes = [p.write for p in plans]
                unit.write(writes, observe=False)
                unit.after_commit(partial(self._observe_lags, writes))
            for row, planned in zip(rows, plans, strict=True):
                if planned.cleared is not None:
                    # The definition changed under a stored deadline (a state
                    # lost its timeout, or a kind was removed).
                    log.warning("stale_deadline_cleared", kind=row.kind, name=row.name,
                                state=row.state, error=planned.cleared)
            fired += len(writes)
            if len(rows) < batch:
                break
        return fired

    def _observe_lags(self, writes: list[Write]) -> None:
        for write in writes:
            lag = (write.history["payload"] or {}).get("lag_seconds")
            if lag is not None:
                self.context.observer.timeout(write.result.kind, lag)
