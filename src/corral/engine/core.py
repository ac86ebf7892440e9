"""The engine: every event is one transaction (docs/architecture.md,
invariants 1-4).

An event is lock -> plan -> write, in one engine transaction
(:mod:`.transaction`): the engine locks the machine row through the store
(:mod:`corral.store.port`), plans what the event does from the shared
definition (:mod:`.planning`, a pure function of the definition and the
locked rows: the new state, deadline, counters, epoch, a history row and the
entry operations for the outbox), and writes the plan before committing;
after the commit, it logs and observes. If anything fails, nothing happened.

By concern: :mod:`.firing` (events from callers, forced states),
:mod:`.sweeping` (due deadlines fire ``timeout`` exactly once however many
engines sweep), :mod:`.outbox` (operation leases and results),
:mod:`.group` (group commit), :mod:`.reads` (what operators read). This
module is the facade over them, with machine creation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from corral.engine.events import (
    CREATE_EVENT,
    FORCE_EVENT,
    SOURCE_ROLES,
    Clock,
    FireRequest,
    FireResult,
    Observer,
    check_key_reuse,
    outcome_document,
    replay_outcome,
    utcnow,
)
from corral.engine.firing import Firing
from corral.engine.group import GroupCommit
from corral.engine.outbox import Outbox
from corral.engine.reads import Reads
from corral.engine.sweeping import Sweeper
from corral.engine.transaction import Context, Transaction, transaction
from corral.errors import Conflict, DuplicateKey
from corral.machines import MachineSet, StateMachine
from corral.names import Role
from corral.store.port import Store
from corral.store.values import HistoryEntry, MachineRow

__all__ = ["CREATE_EVENT", "FORCE_EVENT", "SOURCE_ROLES", "Clock", "Engine", "FireRequest",
           "FireResult", "Observer", "Transaction", "check_key_reuse", "outcome_document",
           "replay_outcome", "utcnow"]


class Engine:
    """Fires events against machines stored in one database.

    A small facade over plain collaborators that share one :class:`Context`:
    :attr:`firing` (events and forced states, with :attr:`group` commit),
    :attr:`sweeper` (due deadlines, state counts, retention), :attr:`outbox`
    (operation leases and results) and :attr:`reads`. Every write goes
    through one engine transaction (:meth:`transaction`).

    Args:
        store: the database, from :func:`corral.store.open_store`.
        machines: the loaded definitions.
        clock: returns the current UTC time (tests pass a controllable clock).
        timeout_scale: multiplies every state timeout (demos run faster with 0.1).
    """

    def __init__(
        self,
        store: Store,
        machines: MachineSet,
        *,
        clock: Clock = utcnow,
        timeout_scale: float = 1.0,
        observer: Observer | None = None,
    ) -> None:
        self.context = Context(store=store, machines=machines, clock=clock,
                               timeout_scale=timeout_scale, observer=observer or Observer())
        self.store = store
        self.machines = machines
        self.clock = clock
        self.timeout_scale = timeout_scale
        self.firing = Firing(self.context)
        self.group: GroupCommit = self.firing.group
        self.sweeper = Sweeper(self.context)
        self.outbox = Outbox(self.context)
        self.reads = Reads(machines, store.unit)
        # What another service adds to a kind's explain document (a board's
        # holder): kind -> callables of (engine, row) -> (key, value, sentence).
        self.explainers: dict[str, list[Callable[[Engine, MachineRow], tuple[
            str, Any, str | None]]]] = {}

    @property
    def observer(self) -> Observer:
        return self.context.observer

    @observer.setter
    def observer(self, observer: Observer) -> None:
        self.context.observer = observer

    def machine(self, kind: str) -> StateMachine:
        """Raises: NotFound (no such kind)."""
        return self.machines[kind]

    def close(self) -> None:
        """Stop group commit threads (pending events are finished first)."""
        self.group.close()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One engine transaction in which a caller changes its own tables
        (``t.tx.pools.assign(...)``) and fires events on machines it locked
        (``t.lock``, ``t.fire``): everything commits at the end or nothing
        does; then what it wrote is logged and counted."""
        with transaction(self.context) as unit:
            yield unit

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

        With group commit on (``engine.group.start()``), events fired by
        concurrent threads share transactions; each is still validated alone
        and a refused event never fails its neighbours.

        Raises:
            UnknownMachine: no such machine.
            EventNotAllowed: the current state does not accept ``event``; nothing changed.
            Forbidden: ``role`` may not fire ``event`` (there).
            InvalidRequest: the payload or reason fails the payload check, or
                the idempotency key was used for another request.
        """
        return self.firing.fire(FireRequest(
            kind=kind, name=name, event=event, source=source, payload=payload, actor=actor,
            reason=reason, idempotency=idempotency, role=role))

    async def fire_async(self, request: FireRequest) -> FireResult:
        """See :meth:`corral.engine.firing.Firing.fire_async`."""
        return await self.firing.fire_async(request)

    def fire_batch(self, requests: list[FireRequest]) -> list[Any]:
        """See :meth:`corral.engine.firing.Firing.fire_batch`."""
        return self.firing.fire_batch(requests)

    def force_state(
        self,
        kind: str,
        name: str,
        state: str,
        *,
        actor: str,
        reason: str,
        if_state: str | None = None,
        role: str = Role.OPERATOR,
    ) -> FireResult:
        """Put a machine into ``state`` whatever it is doing, running the state's
        entry operations; with ``if_state``, only if it is currently in that state.
        ``role`` (operator or admin) must be the one the state needs
        (:meth:`~corral.machines.StateMachine.force_role`).

        Raises:
            UnknownMachine, NotFound (no such state), StateMismatch (``if_state``
            differs), Forbidden (the state needs admin), InvalidRequest (the reason).
        """
        return self.firing.force_state(kind, name, state, actor=actor, reason=reason,
                                       if_state=if_state, role=role)

    def create(
        self,
        kind: str,
        name: str,
        *,
        attrs: Mapping[str, Any] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> FireResult:
        """Create a machine in its initial state (running the state's entry operations).

        Raises:
            Conflict: a machine of that kind and name already exists.
        """
        results = self.import_machines(kind, {name: attrs or {}}, actor=actor, reason=reason,
                                       update_existing=False)
        return results[0]

    def import_machines(
        self,
        kind: str,
        inventory: Mapping[str, Mapping[str, Any]],
        *,
        actor: str | None = None,
        reason: str | None = None,
        update_existing: bool = True,
    ) -> list[FireResult]:
        """Create missing machines and update the attributes of existing ones, in
        one transaction: either the whole inventory lands or none of it.

        Returns a result for every created machine (existing ones keep their state).

        Raises:
            Conflict: ``update_existing`` is false and a machine already exists.
        """
        self.machines[kind]
        try:
            with self.transaction() as unit:
                missing = {}
                for name, attrs in inventory.items():
                    existing = unit.tx.machines.lock(kind, name)
                    if existing is None:
                        missing[name] = attrs
                    elif not update_existing:
                        raise Conflict(f"{kind} {name!r} already exists")
                    else:
                        unit.tx.machines.update_attrs(existing.id, attrs, unit.now)
                unit.create_many(kind, missing, actor=actor, reason=reason)
        except DuplicateKey:
            raise Conflict(f"another process created one of these {kind}s at the same time; "
                           "nothing was imported, try again") from None
        return unit.results

    def get(self, kind: str, name: str) -> MachineRow:
        """Raises: UnknownMachine."""
        return self.reads.get(kind, name)

    def list_machines(
        self, kind: str, *, states: list[str] | None = None, failed: bool = False,
        after: str | None = None, limit: int | None = None,
    ) -> list[MachineRow]:
        """See :meth:`corral.engine.reads.Reads.list_machines`."""
        return self.reads.list_machines(kind, states=states, failed=failed, after=after,
                                        limit=limit)

    def describe(self, row: MachineRow, role: str = "admin") -> dict[str, Any]:
        """See :meth:`corral.engine.reads.Reads.describe`."""
        return self.reads.describe(row, role)

    def explain(self, kind: str, name: str, role: str = "admin") -> dict[str, Any]:
        """Why a machine is where it is (see :mod:`corral.engine.explain`).

        Raises: UnknownMachine."""
        from corral.engine.explain import explain

        row = self.get(kind, name)
        document = explain(self.store, self.machines, row, self.describe(row, role),
                           now=self.clock(), timeout_scale=self.timeout_scale)
        for extra in self.explainers.get(kind, ()):
            key, value, sentence = extra(self, row)
            document[key] = value
            if sentence:
                document["summary"] = f"{document['summary'].rstrip()} {sentence}"
        return document

    def history(
        self, kind: str, name: str, *, limit: int = 100, before_id: int | None = None
    ) -> list[HistoryEntry]:
        """See :meth:`corral.engine.reads.Reads.history`."""
        return self.reads.history(kind, name, limit=limit, before_id=before_id)

    def ping(self) -> None:
        """Check that the database answers and its schema is current (readiness).

        Raises:
            SchemaNotCurrent: the database needs ``corral db upgrade``.
            Exception: whatever the driver raises while the database is away.
        """
        with self.store.unit() as tx:
            tx.ping()
        self.store.require_current()
