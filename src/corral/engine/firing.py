"""Firing events: lock, plan, write, in one transaction per batch.

:meth:`Firing.fire` checks what it can before any lock, then hands the event
to the group committer (when on) or fires a batch of one. A batch locks its
machines in id order, reads the outcomes stored for its idempotency keys,
plans every event (:func:`corral.engine.planning.plan_batch`) and writes the
plan with one ``EventTx.write``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from corral.engine.base import EngineBase
from corral.engine.events import FORCE_EVENT, FireRequest, FireResult, outcome_label
from corral.engine.group import GroupCommit
from corral.engine.planning import Batch, final_changes, plan, plan_batch, write_args
from corral.errors import Conflict, CorralError, Forbidden, StateMismatch
from corral.machines import TIMEOUT_EVENT
from corral.payload import check_json, check_text
from corral.store.values import HISTORY_SOURCES


class Firing(GroupCommit, EngineBase):
    """Events fired by callers (boards, operators, services) and forced states."""

    _reserved: dict[tuple[str, str], str]

    def reserve_events(self, kind: str, events: Sequence[str], instead: str) -> None:
        """Refuse ``events`` of ``kind`` from :meth:`fire`; only a unit
        (:meth:`corral.engine.core.Engine.unit`) may fire them. ``instead``
        tells the user what to do."""
        for event in events:
            self._reserved[(kind, event)] = instead

    def fire(
        self,
        kind: str,
        name: str,
        event: str,
        *,
        source: str,
        payload: Any = None,
        actor: str | None = None,
        reason: str | None = None,
        idempotency: tuple[str, str] | None = None,
        role: str | None = None,
    ) -> FireResult:
        """Apply one event to one machine; returns once the transition has committed.

        With ``idempotency`` (scope, key), a repeat of the pair returns the first
        outcome (``replayed`` set, or the same error) without firing again; a
        key used for another machine or event is refused. ``role`` is who fires
        it (see :data:`~corral.machines.definition.FIRERS`; default: the
        role of ``source``), checked against the transition's ``by``.

        With group commit on (:meth:`start_group_commit`), events fired by
        concurrent threads share transactions; each is still validated alone
        and a refused event never fails its neighbours.

        Raises:
            UnknownMachine: no such machine.
            EventNotAllowed: the current state does not accept ``event``; nothing changed.
            Forbidden: ``role`` may not fire ``event`` (there).
            InvalidRequest: the payload or reason fails the payload check, or
                the idempotency key was used for another request.
        """
        request = FireRequest(kind=kind, name=name, event=event, source=source,
                              payload=payload, actor=actor, reason=reason,
                              idempotency=idempotency, role=role)
        self._check(request)
        if self._committer is not None:
            outcome = self._committer.submit(request)
        else:
            [outcome] = self.fire_batch([request])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def fire_async(self, request: FireRequest) -> FireResult:
        """:meth:`fire` for asyncio callers: waits for the commit without holding a
        thread (with group commit: on this loop if :meth:`start_loop_group_commit`
        was called on it, else through the committer threads), or runs
        :meth:`fire_batch` in a worker thread."""
        self._check(request)
        on_loop = self._loop_committer
        if on_loop is not None and on_loop.loop is asyncio.get_running_loop():
            outcome = await on_loop.submit(request)
        elif self._committer is not None:
            outcome = await self._committer.submit_async(request)
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
        with self.store.events() as tx:
            keys = sorted({(r.kind, r.name) for r in requests})
            if len(keys) == 1:
                locked = tx.lock_machine(*keys[0])
                rows = {keys[0]: locked} if locked else {}
            else:
                rows = {(m.kind, m.name): m for m in tx.lock_machines(keys)}
            # Looked up after the locks: repeats of a key aimed at one machine
            # serialize on its row, so a key is never fired twice.
            wanted = [r.idempotency for r in requests if r.idempotency]
            stored = tx.idempotent_outcomes(wanted) if wanted else {}
            batch = self._plan(requests, rows, stored)
            if batch.writes or batch.remembered:
                tx.write(*batch.write_args())
        return self._committed(requests, batch, started)

    async def fire_batch_async(self, conn: Any, requests: list[FireRequest]
                               ) -> list[FireResult | CorralError]:
        """:meth:`fire_batch` on an asyncio connection of the store (see
        :meth:`~corral.store.port.Store.async_events`), for a group committer
        that runs on the event loop."""
        started = time.perf_counter()
        async with self.store.async_events(conn) as tx:
            keys = sorted({(r.kind, r.name) for r in requests})
            if len(keys) == 1:
                locked = await tx.lock_machine(*keys[0])
                rows = {keys[0]: locked} if locked else {}
            else:
                rows = {(m.kind, m.name): m for m in await tx.lock_machines(keys)}
            wanted = [r.idempotency for r in requests if r.idempotency]
            stored = await tx.idempotent_outcomes(wanted) if wanted else {}
            batch = self._plan(requests, rows, stored)
            if batch.writes or batch.remembered:
                await tx.write(*batch.write_args())
        return self._committed(requests, batch, started)

    def _plan(self, requests: list[FireRequest], rows: dict[tuple[str, str], Any],
              stored: dict[tuple[str, str], Any]) -> Batch:
        return plan_batch(self.machines, requests, rows, stored, now=self.clock(),
                          check=self._check, timeout_scale=self.timeout_scale)


    def _committed(self, requests: list[FireRequest], batch: Batch,
                   started: float) -> list[FireResult | CorralError]:
        """Metrics and log lines of a committed batch; its outcomes."""
        self.observer.committed(time.perf_counter() - started, len(requests))
        for request, outcome in zip(requests, batch.outcomes, strict=True):
            self.observer.event(request.kind, request.event, request.source,
                                outcome_label(outcome))
        for write in batch.writes:
            self._log(write.result, write.history["source"])
        return batch.outcomes


    def _check(self, request: FireRequest) -> None:
        """What can be refused before any lock: the source, the kind, reserved
        events, who fires it, and the payload check."""
        if request.source not in HISTORY_SOURCES:
            raise CorralError(f"source must be one of {', '.join(HISTORY_SOURCES)}")
        machine = self.machines[request.kind]
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

    def force_state(
        self,
        kind: str,
        name: str,
        state: str,
        *,
        actor: str,
        reason: str,
        if_state: str | None = None,
        role: str = "operator",
    ) -> FireResult:
        """Put a machine into ``state`` whatever it is doing, running the state's
        entry operations; with ``if_state``, only if it is currently in that state.
        ``role`` (operator or admin) must be the one the state needs
        (:meth:`~corral.machines.StateMachine.force_role`).

        Raises:
            UnknownMachine, NotFound (no such state), StateMismatch (``if_state``
            differs), Forbidden (the state needs admin), InvalidRequest (the reason).
        """
        check_text(reason, "reason")
        if not reason or not reason.strip():
            raise CorralError("a reason is required to force a state")
        machine = self.machines[kind]
        needed = machine.force_role(state)
        if if_state is not None:
            machine.state(if_state)
        if role not in ("operator", "admin") or (needed == "admin" and role != "admin"):
            raise Forbidden(f"forcing {kind} state {state!r} needs the {needed} role (the "
                            f"role its transitions need), not {role}", role=role)
        with self.store.events() as tx:
            row = self._lock(tx, kind, name)
            if if_state is not None and row.state != if_state:
                raise StateMismatch(kind, name, if_state, row.state)
            now = self.clock()
            outcome = machine.enter(row.state, state, FORCE_EVENT, row.counters)
            write = plan(row, outcome, now=now, source="operator", actor=actor, reason=reason,
                         payload=None, operation_id=None, timeout_scale=self.timeout_scale)
            tx.write(*write_args([write], final_changes([write])))
        self._log(write.result, "operator")
        return write.result

