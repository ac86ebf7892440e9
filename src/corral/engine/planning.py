"""Planning: what an event does, as a pure function of the definition and the
locked rows.

Given a machine's locked row and an event, :func:`plan_event` computes
everything the event writes (the new state, deadline, counters and epoch; the
history row; the entry operations for the outbox; any vars change) and the
result the caller gets. :func:`plan_timeout` does the same for a due
deadline, and :func:`plan_batch` for a batch of requests against the rows
locked for them, each judged alone against the state its predecessors left.
Nothing here reads a clock or touches a database: the engine locks, plans,
then writes (``tx.write``) the :class:`~corral.store.values.WriteSet`
that was planned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from corral.engine.events import (
    FireRequest,
    FireResult,
    check_key_reuse,
    outcome_document,
    replay_outcome,
)
from corral.errors import (
    AuthError,
    Conflict,
    CorralError,
    EventNotAllowed,
    InvalidRequest,
    NotFound,
    UnknownMachine,
)
from corral.machines import TIMEOUT_EVENT, MachineSet, Outcome
from corral.names import Source
from corral.store.values import MachineState, StateChange, VarsChange, WriteSet


@dataclass(frozen=True, kw_only=True)
class Write:
    """Everything one accepted event writes, gathered so a batch can share statements."""

    change: StateChange
    history: dict[str, Any]
    operations: list[dict[str, Any]]
    result: FireResult
    vars: VarsChange | None = None


@dataclass
class Batch:
    """What a batch of events planned, before it is written."""

    outcomes: list[FireResult | CorralError] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    remembered: list[dict[str, Any]] = field(default_factory=list)

    def write_set(self) -> WriteSet:
        """What ``tx.write`` writes for the whole batch."""
        return write_set(self.writes, self.remembered)


def write_set(writes: Sequence[Write], remembered: Sequence[dict[str, Any]] = ()) -> WriteSet:
    """What ``tx.write`` writes for these planned events: a machine that took
    several events is written once, in its final state; every event keeps
    its history row."""
    return WriteSet(changes=list({w.change.id: w.change for w in writes}.values()),
                    history=[w.history for w in writes],
                    operations=[op for w in writes for op in w.operations],
                    idempotency=list(remembered),
                    vars_changes=[w.vars for w in writes if w.vars is not None])


def timestamp(value: Any) -> datetime | None:
    """A deadline var: an ISO 8601 timestamp (UTC when it names no zone)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"deadline {value!r} is not an ISO 8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def deadline_after(now: datetime, timeout: float | None, scale: float) -> datetime | None:
    if timeout is None:
        return None
    return now + timedelta(seconds=timeout * scale)


def result_of(row: MachineState, outcome: Outcome, epoch: int) -> FireResult:
    return FireResult(kind=row.kind, name=row.name, event=outcome.event,
                      from_state=outcome.from_state, to_state=outcome.to_state, epoch=epoch,
                      entered=outcome.entered, operations=outcome.operations)


def ignored(row: MachineState, event: str, note: str) -> FireResult:
    """The result of an event that changed nothing (a stale operation result)."""
    return FireResult(kind=row.kind, name=row.name, event=event, from_state=row.state,
                      to_state=row.state, epoch=row.epoch, entered=False, ignored=True,
                      note=note)


def plan(
    row: MachineState,
    outcome: Outcome,
    *,
    now: datetime,
    source: str,
    actor: str | None,
    reason: str | None,
    payload: Any,
    operation_id: int | None,
    timeout_scale: float = 1.0,
) -> Write:
    """What the computed ``outcome`` of an event on ``row`` writes."""
    if outcome.entered:
        epoch = row.epoch + 1
        deadline = deadline_after(now, outcome.timeout, timeout_scale)
        if outcome.deadline_var is not None:
            deadline = timestamp(outcome.vars.get(outcome.deadline_var))
        change = StateChange(id=row.id, state=outcome.to_state, state_entered_at=now,
                             deadline=deadline, counters=outcome.counters, epoch=epoch,
                             updated_at=now)
    else:
        epoch = row.epoch
        change = StateChange(id=row.id, state=row.state, state_entered_at=row.state_entered_at,
                             deadline=row.deadline, counters=outcome.counters, epoch=epoch,
                             updated_at=now)
    history = {
        "machine_id": row.id, "epoch": epoch, "from_state": outcome.from_state,
        "to_state": outcome.to_state, "event": outcome.event, "source": source,
        "actor": actor, "reason": reason, "at": now, "payload": payload,
        "operation_id": operation_id,
    }
    operations = [
        {
            "machine_id": row.id, "machine_epoch": epoch, "kind": kind, "target": row.name,
            "payload": {"state": outcome.to_state, "event": outcome.event,
                        "event_payload": payload if source != "timeout" else None},
            "created_at": now,
        }
        for kind in outcome.operations
    ]
    variables = (VarsChange(id=row.id, values=outcome.vars, replace=outcome.clear_vars)
                 if outcome.changes_vars else None)
    return Write(change=change, history=history, operations=operations,
                 result=result_of(row, outcome, epoch), vars=variables)


def plan_event(
    machines: MachineSet,
    row: MachineState,
    event: str,
    *,
    now: datetime,
    source: str,
    role: str,
    payload: Any = None,
    actor: str | None = None,
    reason: str | None = None,
    operation_id: int | None = None,
    timeout_scale: float = 1.0,
) -> Write:
    """Compute ``event`` fired by ``role`` on the locked ``row`` and plan its write.

    Raises:
        EventNotAllowed, Forbidden, InvalidRequest: as the machine's ``compute``.
    """
    outcome = machines[row.kind].compute(row.state, row.counters, event, name=row.name,
                                         payload=payload, role=role)
    return plan(row, outcome, now=now, source=source, actor=actor, reason=reason,
                payload=payload, operation_id=operation_id, timeout_scale=timeout_scale)


@dataclass(frozen=True)
class TimeoutPlan:
    """A due deadline's write; ``cleared`` names why the deadline was dropped
    instead of fired (the definition changed under it), else None."""

    write: Write
    cleared: str | None = None


def plan_timeout(machines: MachineSet, row: MachineState, now: datetime, *,
                 timeout_scale: float = 1.0) -> TimeoutPlan:
    """The ``timeout`` event of a machine whose deadline has passed.

    A deadline the definition no longer explains (its state lost its timeout,
    or its kind was removed) is cleared rather than claimed forever.
    """
    try:
        if row.kind not in machines:
            raise NotFound(f"no definition for kind {row.kind!r}")
        outcome = machines[row.kind].compute(row.state, row.counters, TIMEOUT_EVENT,
                                             name=row.name)
    except (EventNotAllowed, NotFound) as exc:
        outcome = Outcome(from_state=row.state, to_state=row.state, event=TIMEOUT_EVENT,
                          entered=False, counters=row.counters, operations=(), timeout=None)
        change = StateChange(id=row.id, state=row.state, state_entered_at=row.state_entered_at,
                             deadline=None, counters=row.counters, epoch=row.epoch,
                             updated_at=now)
        return TimeoutPlan(Write(change=change, history={
            "machine_id": row.id, "epoch": row.epoch, "from_state": row.state,
            "to_state": row.state, "event": TIMEOUT_EVENT, "source": "timeout",
            "actor": None, "reason": f"deadline cleared: {exc}", "at": now,
            "payload": None, "operation_id": None,
        }, operations=[], result=result_of(row, outcome, row.epoch)), cleared=str(exc))
    # How late the sweep fired, for operators and the timeout-lag metric.
    payload = {"lag_seconds": round((now - row.deadline).total_seconds(), 3)
               if row.deadline else None}
    return TimeoutPlan(plan(row, outcome, now=now, source=Source.TIMEOUT, actor=None, reason=None,
                            payload=payload, operation_id=None, timeout_scale=timeout_scale))


def plan_batch(
    machines: MachineSet,
    requests: list[FireRequest],
    rows: Mapping[tuple[str, str], MachineState],
    stored: Mapping[tuple[str, str], Any],
    *,
    now: datetime,
    check: Callable[[FireRequest], None] = lambda request: None,
    timeout_scale: float = 1.0,
) -> Batch:
    """Plan a batch of events against the rows locked for it, in order.

    ``rows`` are the locked machines by (kind, name); ``stored`` the outcomes
    kept for the requests' idempotency keys. A request whose key is stored
    replays that outcome (or is refused, if the key answered another
    request); every other one is checked (``check``), computed against the
    state its predecessors in the batch left, and its outcome kept when it
    carries a key. A refused request gets its error and changes nothing.
    """
    batch = Batch()
    rows = dict(rows)
    stored = dict(stored)
    for request in requests:
        if request.idempotency in stored:
            document = stored[request.idempotency]
            try:
                check_key_reuse(document, request)
            except Conflict as exc:
                batch.outcomes.append(exc)
            else:
                batch.outcomes.append(replay_outcome(document))
            continue
        outcome: FireResult | CorralError
        try:
            check(request)
            key = (request.kind, request.name)
            row = rows.get(key)
            if row is None:
                raise UnknownMachine(request.kind, request.name)
            if request.only_in is not None and row.state not in request.only_in:
                raise AuthError(f"this token is valid only while {request.kind} "
                                f"{request.name} is in {', '.join(sorted(request.only_in))}; "
                                f"it is {row.state}")
            write = plan_event(machines, row, request.event, now=now, source=request.source,
                               role=request.firer, payload=request.payload,
                               actor=request.actor, reason=request.reason,
                               timeout_scale=timeout_scale)
            rows[key] = write.change.applied_to(row)
            batch.writes.append(write)
            outcome = write.result
        except CorralError as exc:
            outcome = exc
        batch.outcomes.append(outcome)
        if request.idempotency is not None:
            document = outcome_document(outcome, request)
            stored[request.idempotency] = document
            locked = rows.get((request.kind, request.name))
            batch.remembered.append({"scope": request.idempotency[0],
                                     "key": request.idempotency[1],
                                     "machine_id": locked.id if locked else None,
                                     "outcome": document, "created_at": now})
    return batch
