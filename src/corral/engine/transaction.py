"""The engine's one unit of work: lock, plan, write; then, once it has
committed, log and observe.

Every writer goes through a :class:`Transaction`: events fired by callers,
the deadline sweep, operation results, forced states, machine creation and
the services that change their own tables and machines together (a pool's
assignment row and its ``assign`` event). Inside, a writer locks machines
(:meth:`Transaction.lock`), plans with :mod:`corral.engine.planning` (or
lets :meth:`fire`, :meth:`enter` and :meth:`create_many` do it) and writes
the planned batch (:meth:`write`); the store's repositories for its own
tables are at ``transaction.tx`` (``transaction.tx.pools.assign(...)``).
Nothing is logged or counted until the commit: a transaction that fails
leaves neither a row nor a log line claiming a transition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import structlog

from corral.engine.events import (
    CREATE_EVENT,
    FORCE_EVENT,
    SOURCE_ROLES,
    Clock,
    FireResult,
    Observer,
)
from corral.engine.planning import Write, deadline_after, plan, plan_event, write_set
from corral.errors import UnknownMachine
from corral.machines import MachineSet
from corral.names import Source
from corral.payload import check_json, check_text
from corral.store.port import Store
from corral.store.values import MachineState

log = structlog.get_logger("corral.engine")


@dataclass(kw_only=True)
class Context:
    """What every part of the engine shares: the store, the definitions, the
    clock, the timeout scale and the observer (which the HTTP service
    replaces with its metrics)."""

    store: Store
    machines: MachineSet
    clock: Clock
    timeout_scale: float
    observer: Observer


def log_transition(result: FireResult, source: str, **extra: Any) -> None:
    log.info("transition", **{result.kind: result.name}, from_state=result.from_state,
             to_state=result.to_state, _event=result.event, source=source,
             epoch=result.epoch, **extra)


class Transaction:
    """One transaction of the engine (see the module docstring).

    Attributes:
        tx: the store's transaction (its repositories).
        now: the transaction's time, read once when it opened.
        writes: what it wrote, in order.
    """

    def __init__(self, context: Context, tx: Any, now: datetime) -> None:
        self.context = context
        self.machines = context.machines
        self.tx = tx
        self.now = now
        self.writes: list[Write] = []
        self._logged: list[tuple[Write, dict[str, Any]]] = []
        self._observations: list[Callable[[], None]] = []

    # -- lock and plan
    def lock(self, kind: str, name: str) -> MachineState:
        """Raises: UnknownMachine."""
        self.machines[kind]
        row = self.tx.machines.lock(kind, name)
        if row is None:
            raise UnknownMachine(kind, name)
        return row

    def fire(
        self, row: MachineState, event: str, *, source: str, payload: Any = None,
        actor: str | None = None, reason: str | None = None, role: str | None = None,
        operation_id: int | None = None, observe: bool = True,
    ) -> MachineState:
        """Apply ``event`` to the locked ``row``, fired by ``role`` (default:
        the role of ``source``); returns the row as it is now.

        Raises:
            EventNotAllowed, Forbidden, InvalidRequest: nothing of the
            transaction commits unless the caller handles it.
        """
        check_json(payload, "payload")
        check_text(reason, "reason")
        write = plan_event(self.machines, row, event, now=self.now, source=source,
                           role=role or SOURCE_ROLES[source], payload=payload, actor=actor,
                           reason=reason, operation_id=operation_id,
                           timeout_scale=self.context.timeout_scale)
        self.write([write], observe=observe,
                   log_extra={"operation_id": operation_id} if operation_id else None)
        return write.change.applied_to(row)

    def enter(self, row: MachineState, state: str, *, actor: str, reason: str) -> Write:
        """Put the locked ``row`` into ``state`` whatever it is doing (a forced
        state), running the state's entry operations."""
        outcome = self.machines[row.kind].enter(row.state, state, FORCE_EVENT, row.counters)
        write = plan(row, outcome, now=self.now, source=Source.OPERATOR, actor=actor,
                     reason=reason, payload=None, operation_id=None,
                     timeout_scale=self.context.timeout_scale)
        self.write([write])
        return write

    def create(self, kind: str, name: str, attrs: Mapping[str, Any], *, actor: str | None,
               reason: str | None) -> MachineState:
        """Create a machine in its initial state; returns its (locked) row."""
        [row] = self.create_many(kind, {name: attrs}, actor=actor, reason=reason)
        return row

    def create_many(self, kind: str, inventory: Mapping[str, Mapping[str, Any]], *,
                    actor: str | None, reason: str | None) -> list[MachineState]:
        """Create machines in their initial state; their history and entry
        operations are written in one batch."""
        machine = self.machines[kind]
        outcome = machine.enter("", machine.initial, CREATE_EVENT, {})
        deadline = deadline_after(self.now, outcome.timeout, self.context.timeout_scale)
        writes, rows = [], []
        for name, attrs in inventory.items():
            machine_id = self.tx.machines.insert(kind=kind, name=name, state=machine.initial,
                                                 attrs=attrs, now=self.now, deadline=deadline)
            placeholder = MachineState(id=machine_id, kind=kind, name=name, state="",
                                       state_entered_at=self.now, deadline=None, counters={},
                                       epoch=0)
            write = plan(placeholder, outcome, now=self.now, source=Source.OPERATOR, actor=actor,
                         reason=reason, payload=None, operation_id=None,
                         timeout_scale=self.context.timeout_scale)
            writes.append(write)
            rows.append(write.change.applied_to(placeholder))
        self.write(writes)
        return rows

    # -- write, and what happens after the commit
    def write(self, writes: Sequence[Write], remembered: Sequence[dict[str, Any]] = (),
              *, observe: bool = True, log_extra: Mapping[str, Any] | None = None) -> None:
        """Write planned events (and outcomes kept for replay) in one
        statement batch; each is logged after the commit, and, with
        ``observe``, counted as an accepted event."""
        batch = write_set(writes, remembered)
        if batch:
            self.tx.write(batch)
        self.record(writes, observe=observe, log_extra=log_extra)

    def record(self, writes: Sequence[Write], *, observe: bool = True,
               log_extra: Mapping[str, Any] | None = None) -> None:
        """Keep events written through ``tx`` directly (a batch planned whole),
        to be logged after the commit and, with ``observe``, counted."""
        self.writes.extend(writes)
        for write in writes:
            self._logged.append((write, dict(log_extra or {})))
            if observe:
                self.after_commit(partial(self._accepted, write))

    def _accepted(self, write: Write) -> None:
        result = write.result
        self.context.observer.event(result.kind, result.event, write.history["source"],
                                    "accepted")

    def after_commit(self, observation: Callable[[], None]) -> None:
        """Run ``observation`` (a metric) once the transaction has committed."""
        self._observations.append(observation)

    @property
    def results(self) -> list[FireResult]:
        return [w.result for w in self.writes]

    def committed(self) -> None:
        """Log and observe what the transaction wrote (it has committed)."""
        for observation in self._observations:
            observation()
        for write, extra in self._logged:
            log_transition(write.result, write.history["source"], **extra)


@contextmanager
def transaction(context: Context, *, events: bool = False) -> Iterator[Transaction]:
    """One engine transaction on the store: a general one, or with ``events``
    the store's event path (lock, read outcomes, write: two round trips on
    PostgreSQL). Commits on success, then logs and observes; rolls back on an
    error."""
    opened = context.store.events() if events else context.store.unit()
    with opened as tx:
        unit = Transaction(context, tx, context.clock())
        yield unit
    unit.committed()
