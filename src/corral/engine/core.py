"""The engine: every event is one transaction (DESIGN.md invariants 1-4).

An event is lock -> plan -> write. The engine locks the machine row through
the store (:mod:`corral.store.port`), plans what the event does from the
shared definition (:mod:`.planning`, a pure function of the definition and
the locked rows: the new state, deadline, counters, epoch, a history row and
the entry operations for the outbox), and writes the plan before committing.
If anything fails, nothing happened.

By concern: :mod:`.firing` (events from callers, forced states),
:mod:`.sweeping` (due deadlines fire ``timeout`` exactly once however many
engines sweep), :mod:`.outbox` (operation leases and results),
:mod:`.group` (group commit), :mod:`.unit` (a service's own transaction).
This module puts them together with machine creation and presentation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
from corral.engine.outbox import Outbox
from corral.engine.reads import Reads
from corral.engine.sweeping import Sweeping
from corral.engine.unit import Unit
from corral.errors import Conflict, DuplicateKey
from corral.machines import MachineSet
from corral.store.port import Store
from corral.store.values import HistoryEntry, MachineRow

__all__ = ["CREATE_EVENT", "FORCE_EVENT", "SOURCE_ROLES", "Clock", "Engine", "FireRequest",
           "FireResult", "Observer", "Unit", "check_key_reuse", "outcome_document",
           "replay_outcome", "utcnow"]


class Engine(Firing, Sweeping, Outbox):
    """Fires events against machines stored in one database.

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
        self.store = store
        self.machines = machines
        self.clock = clock
        self.timeout_scale = timeout_scale
        self.observer = observer or Observer()
        self._committer = None
        self._loop_committer = None
        # (kind, event) -> how to do it instead: events only a service fires,
        # because they change its own tables too (a pool's assign and release).
        self._reserved = {}
        self.reads = Reads(machines, store.unit)

    @contextmanager
    def unit(self) -> Iterator[Unit]:
        """One transaction in which a caller changes its own tables and fires
        events (a pool's assignment row and its ``assign`` event, together).
        Machines are locked through the unit; everything commits at the end or
        nothing does."""
        with self.store.unit() as tx:
            unit = Unit(self.machines, tx, self.clock(), timeout_scale=self.timeout_scale)
            yield unit
        for write in unit.writes:
            source = write.history["source"]
            self.observer.event(write.result.kind, write.result.event, source, "accepted")
            self._log(write.result, source)

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
            with self.unit() as unit:
                missing = {}
                for name, attrs in inventory.items():
                    existing = unit.tx.lock_machine(kind, name)
                    if existing is None:
                        missing[name] = attrs
                    elif not update_existing:
                        raise Conflict(f"{kind} {name!r} already exists")
                    else:
                        unit.tx.update_machine_attrs(existing.id, attrs, unit.now)
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
        return explain(self.store, self.machines, row, self.describe(row, role),
                       now=self.clock(), timeout_scale=self.timeout_scale)

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
