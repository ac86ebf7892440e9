"""Firing events: lock, plan, write, in one transaction per batch.

:meth:`Firing.fire` checks what it can before any lock, then hands the event
to the group committer (when on) or fires a batch of one. A batch locks its
machines in id order, reads the outcomes stored for its idempotency keys,
plans every event (:func:`corral.engine.planning.plan_batch`) and writes the
plan in one engine transaction. The batch is written once, as a generator
of store calls (:meth:`Firing._batch_steps`), and run either synchronously
or on an asyncio connection (:mod:`corral.steps`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from corral.engine.events import FireRequest, FireResult, outcome_label
from corral.engine.group import GroupCommit
from corral.engine.planning import Batch, plan_batch
from corral.engine.transaction import Context, Transaction, transaction
from corral.errors import Conflict, CorralError, Forbidden, StateMismatch
from corral.machines import TIMEOUT_EVENT
from corral.names import HUMAN_FIRERS, Role
from corral.payload import check_json, check_text
from corral.steps import run_async, run_sync
from corral.store.port import Store
from corral.store.values import HISTORY_SOURCES


@dataclass(frozen=True)
class Guard:
    """A check of people's events on a kind of machine (see :meth:`Firing.guard`).

    Attributes:
        read: ``read(tx, names)``, a store call (on the event path too) for
            what the check needs of the named machines.
        refusal: ``refusal(read, name)``, the error refusing a person's event
            on ``name``, or None.
    """

    read: Callable[[Any, list[str]], Any]
    refusal: Callable[[Any, str], CorralError | None]


class Firing:
    """Events fired by callers (boards, operators, services) and forced states."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.group = GroupCommit(self)
        # (kind, event) -> how to do it instead: events only a service fires,
        # because they change its own tables too (a pool's assign and release).
        self._reserved: dict[tuple[str, str], str] = {}
        # kind -> a check of a person's event or forced state on a machine of
        # that kind, run in the transaction after the machine's row is locked
        # (a board a lease holds: docs/leases.md).
        self._guards: dict[str, Guard] = {}

    @property
    def store(self) -> Store:
        return self.context.store

    def reserve_events(self, kind: str, events: Sequence[str], instead: str) -> None:
        """Refuse ``events`` of ``kind`` from :meth:`fire`; only a service's
        transaction may fire them. ``instead`` tells the user what to do."""
        for event in events:
            self._reserved[(kind, event)] = instead

    def guard(self, kind: str, guard: Guard) -> None:
        """Refuse a person's (an operator's or an admin's) event or forced
        state on a machine of ``kind`` when ``guard`` says so, judged in the
        transaction after the rows are locked. A batch reads what its guards
        need once, for all its people's events."""
        self._guards[kind] = guard

    def _guard_reads(self, tx: Any, requests: list[FireRequest],
                     rows: dict[tuple[str, str], Any]
                     ) -> Generator[Any, Any, dict[tuple[str, str], CorralError]]:
        """Why each guarded machine of the batch refuses a person's event,
        by (kind, name): one read per guarded kind, of the locked machines
        people aim at (usually none, and then no read)."""
        aimed: dict[str, set[str]] = {}
        for r in requests:
            if r.kind in self._guards and r.firer in HUMAN_FIRERS and (r.kind, r.name) in rows:
                aimed.setdefault(r.kind, set()).add(r.name)
        refusals: dict[tuple[str, str], CorralError] = {}
        for kind, names in aimed.items():
            guard = self._guards[kind]
            found = yield guard.read(tx, sorted(names))
            for name in names:
                error = guard.refusal(found, name)
                if error is not None:
                    refusals[(kind, name)] = error
        return refusals

    def fire(self, request: FireRequest) -> FireResult:
        """See :meth:`corral.engine.core.Engine.fire`."""
        self.check(request)
        committer = self.group.committer
        if committer is not None:
            outcome = committer.submit(request)
        else:
            [outcome] = self.fire_batch([request])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def fire_async(self, request: FireRequest) -> FireResult:
        """:meth:`fire` for asyncio callers: waits for the commit without holding a
        thread (with group commit: on this loop if the loop committer runs on
        it, else through the committer threads), or runs :meth:`fire_batch`
        in a worker thread."""
        self.check(request)
        on_loop, threaded = self.group.loop_committer, self.group.committer
        if on_loop is not None and on_loop.loop is asyncio.get_running_loop():
            outcome = await on_loop.submit(request)
        elif threaded is not None:
            outcome = await threaded.submit_async(request)
        else:
            [outcome] = await asyncio.to_thread(self.fire_batch, [request])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def fire_batch(self, requests: list[FireRequest]) -> list[FireResult | CorralError]:
        """Apply several events in one transaction, in order.

        Machines are locked in id order. Each event is computed against the
        state its predecessors in the batch left; one that is refused gets its
        error in the result list and changes nothing. Returns, per request, its
        result or its error (after the commit).
        """
        started = time.perf_counter()
        with transaction(self.context, events=True) as unit:
            batch = run_sync(self._batch_steps(unit, requests, started))
        return batch.outcomes

    async def fire_batch_async(self, conn: Any, requests: list[FireRequest]
                               ) -> list[FireResult | CorralError]:
        """:meth:`fire_batch` on an asyncio connection of the store (see
        :meth:`~corral.store.port.Store.async_events`), for a group committer
        that runs on the event loop."""
        started = time.perf_counter()
        async with self._async_transaction(conn) as unit:
            batch = await run_async(self._batch_steps(unit, requests, started))
        unit.committed()
        return batch.outcomes

    @asynccontextmanager
    async def _async_transaction(self, conn: Any) -> Any:
        async with self.store.async_events(conn) as tx:
            yield Transaction(self.context, tx, self.context.clock())

    def _batch_steps(self, unit: Transaction, requests: list[FireRequest],
                     started: float) -> Generator[Any, Any, Batch]:
        """The body of a batch, once for both calling conventions: each
        ``yield`` hands over what a store call returned (a value, or an
        awaitable on the asyncio path) and gets its value back."""
        tx = unit.tx
        keys = sorted({(r.kind, r.name) for r in requests})
        if len(keys) == 1:
            locked = yield tx.machines.lock(*keys[0])
            rows = {keys[0]: locked} if locked else {}
        else:
            rows = {(m.kind, m.name): m for m in (yield tx.machines.lock_many(keys))}
        # Looked up after the locks: repeats of a key aimed at one machine
        # serialize on its row, so a key is never fired twice.
        wanted = [r.idempotency for r in requests if r.idempotency]
        stored = (yield tx.idempotency.outcomes(wanted)) if wanted else {}
        refusals = yield from self._guard_reads(tx, requests, rows)

        def check(request: FireRequest) -> None:
            self.check(request)
            refusal = refusals.get((request.kind, request.name))
            if refusal is not None and request.firer in HUMAN_FIRERS:
                raise refusal

        batch = plan_batch(self.context.machines, requests, rows, stored, now=unit.now,
                           check=check, timeout_scale=self.context.timeout_scale)
        written = batch.write_set()
        if written:
            yield tx.write(written)
        unit.record(batch.writes, observe=False)
        observer = self.context.observer

        def observe() -> None:
            observer.committed(time.perf_counter() - started, len(requests))
            for request, outcome in zip(requests, batch.outcomes, strict=True):
                observer.event(request.kind, request.event, request.source,
                               outcome_label(outcome))

        unit.after_commit(observe)
        return batch

    def check(self, request: FireRequest) -> None:
        """What can be refused before any lock: the source, the kind, reserved
        events, who fires it, and the payload check."""
        if request.source not in HISTORY_SOURCES:
            raise CorralError(f"source must be one of {', '.join(HISTORY_SOURCES)}")
        machine = self.context.machines[request.kind]
        if request.event == TIMEOUT_EVENT:
            raise CorralError("'timeout' is fired by the deadline sweep only; to move a machine "
                              "on, force its state")
        instead = self._reserved.get((request.kind, request.event))
        if instead is not None:
            raise Conflict(f"{request.kind} event {request.event!r} cannot be fired directly; "
                           f"{instead}")
        machine.check_firer(request.event, request.firer)
        check_json(request.payload, "payload")
        check_text(request.reason, "reason")

    def force_state(self, kind: str, name: str, state: str, *, actor: str, reason: str,
                    if_state: str | None = None, role: str = Role.OPERATOR) -> FireResult:
        """See :meth:`corral.engine.core.Engine.force_state`."""
        check_text(reason, "reason")
        if not reason or not reason.strip():
            raise CorralError("a reason is required to force a state")
        machine = self.context.machines[kind]
        needed = machine.force_role(state)
        if if_state is not None:
            machine.state(if_state)
        if role not in HUMAN_FIRERS or (needed == Role.ADMIN and role != Role.ADMIN):
            raise Forbidden(f"forcing {kind} state {state!r} needs the {needed} role (the "
                            f"role its transitions need), not {role}", role=role)
        guard = self._guards.get(kind)
        with transaction(self.context, events=guard is None) as unit:
            row = unit.lock(kind, name)
            refusal = guard.refusal(guard.read(unit.tx, [name]), name) if guard else None
            if refusal is not None:
                raise refusal
            if if_state is not None and row.state != if_state:
                raise StateMismatch(kind, name, if_state, row.state)
            write = unit.enter(row, state, actor=actor, reason=reason)
        return write.result
