"""The engine: every event is one transaction (DESIGN.md invariants 1-4).

``fire`` locks the machine row, computes the outcome from the shared
definition, and writes the new state, deadline, counters, epoch, a history row
and the entry operations (the outbox) before committing. If anything fails,
nothing happened. The deadline sweep claims due rows with ``SKIP LOCKED`` and
fires ``timeout`` on each in the claiming transaction, so a due row fires
exactly once however many engines sweep. Operation results come back through
``report_operation`` as events carrying the operation id; a result for a state
entry the machine has already left is recorded on the operation and ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from corral.errors import (
    Conflict,
    CorralError,
    DuplicateKey,
    EventNotAllowed,
    Forbidden,
    InvalidRequest,
    NotFound,
    StateMismatch,
    UnknownMachine,
)
from corral.machines import TIMEOUT_EVENT, MachineSet, Outcome, StateMachine
from corral.payload import check_json, check_text, readable, readable_text
from corral.store import values as q
from corral.store.port import EventTx, Store, Tx
from corral.store.values import HISTORY_SOURCES

if TYPE_CHECKING:
    from corral.engine.group import AsyncGroupCommitter, GroupCommitter

log = structlog.get_logger("corral.engine")

Clock = Callable[[], datetime]
FORCE_EVENT = "force_state"
CREATE_EVENT = "create"
# Who fires an event from each history source, when the caller names no role
# (an admin token names "admin").
SOURCE_ROLES = {"callback": "board", "operator": "operator", "operation": "operation",
                "timeout": "timeout"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def _outcome_label(outcome: object) -> str:
    if isinstance(outcome, FireResult):
        return "replayed" if outcome.replayed else "accepted"
    if isinstance(outcome, UnknownMachine):
        return "unknown"
    return "refused"


@dataclass(frozen=True, kw_only=True)
class FireResult:
    """What an event did. ``ignored`` results changed no machine state."""

    kind: str
    name: str
    event: str
    from_state: str
    to_state: str
    epoch: int
    entered: bool
    operations: tuple[str, ...] = ()
    ignored: bool = False
    note: str | None = None
    replayed: bool = False


def _timestamp(value: Any) -> datetime | None:
    """A deadline var: an ISO 8601 timestamp (UTC when it names no zone)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"deadline {value!r} is not an ISO 8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Observer:
    """Receives what the engine does, for metrics. The default does nothing."""

    def event(self, kind: str, event: str, source: str, outcome: str) -> None:
        """``outcome``: accepted, refused, unknown or replayed."""

    def committed(self, seconds: float, events: int) -> None:
        """A transaction carrying ``events`` events committed after ``seconds``."""

    def timeout(self, kind: str, lag_seconds: float) -> None:
        """A timeout fired ``lag_seconds`` after its deadline."""

    def operation(self, kind: str, outcome: str) -> None:
        """An operation finished: ok, failed, stale, retry."""


@dataclass(frozen=True, kw_only=True)
class FireRequest:
    """One event to fire (see :meth:`Engine.fire`)."""

    kind: str
    name: str
    event: str
    source: str
    payload: Any = None
    actor: str | None = None
    reason: str | None = None
    # (scope, key): a repeat of the same pair replays the first outcome.
    idempotency: tuple[str, str] | None = None
    # Who fires it (a transition's ``by``); None: the role of ``source``.
    role: str | None = None

    @property
    def firer(self) -> str:
        return self.role or SOURCE_ROLES.get(self.source, self.source)


def outcome_document(outcome: FireResult | CorralError, request: FireRequest
                     ) -> dict[str, Any]:
    """How an outcome is stored for idempotent replay, with the request it
    answered (a key reused for another machine or event is refused)."""
    used_for = {"request": {"kind": request.kind, "name": request.name,
                            "event": request.event}}
    if isinstance(outcome, FireResult):
        return used_for | {"result": {k: v for k, v in outcome.__dict__.items()
                                      if k != "replayed"}
                           | {"operations": list(outcome.operations)}}
    if isinstance(outcome, EventNotAllowed):
        return used_for | {"error": "event_not_allowed", "kind": outcome.kind,
                           "name": outcome.name, "state": outcome.state,
                           "event": outcome.event, "allowed": outcome.allowed}
    if isinstance(outcome, UnknownMachine):
        return used_for | {"error": "unknown_machine", "kind": outcome.kind,
                           "name": outcome.name}
    if isinstance(outcome, InvalidRequest):
        return used_for | {"error": "invalid_request", "message": str(outcome)}
    if isinstance(outcome, Forbidden):
        return used_for | {"error": "forbidden", "message": str(outcome), "role": outcome.role}
    return used_for | {"error": "refused", "message": str(outcome)}


def check_key_reuse(document: Mapping[str, Any], request: FireRequest) -> None:
    """An idempotency key answers only a repeat of the request it was first used for.

    Raises:
        InvalidRequest: the key was used for another machine or event (keys
            stored before the request was kept with them are not compared).
    """
    first = document.get("request")
    if first is None:
        return
    now = {"kind": request.kind, "name": request.name, "event": request.event}
    if first != now:
        raise InvalidRequest(
            f"Idempotency-Key {request.idempotency[1] if request.idempotency else ''!r} was "
            f"used for {first['kind']} {first['name']!r} event {first['event']!r}, not for "
            f"{now['kind']} {now['name']!r} event {now['event']!r}: use a new key for a "
            "new request")


def replay_outcome(document: Mapping[str, Any]) -> FireResult | CorralError:
    if "result" in document:
        fields = dict(document["result"])
        fields["operations"] = tuple(fields.get("operations", ()))
        return FireResult(**fields, replayed=True)
    error = document["error"]
    if error == "forbidden":
        return Forbidden(document["message"], role=document.get("role", ""))
    if error == "event_not_allowed":
        return EventNotAllowed(document["kind"], document["name"], document["state"],
                               document["event"], list(document["allowed"]))
    if error == "unknown_machine":
        return UnknownMachine(document["kind"], document["name"])
    if error == "invalid_request":
        return InvalidRequest(document["message"])
    return CorralError(document.get("message", "refused"))


@dataclass(frozen=True, kw_only=True)
class _Write:
    """Everything one accepted event writes, gathered so a batch can share statements."""

    change: q.StateChange
    history: dict[str, Any]
    operations: list[dict[str, Any]]
    result: FireResult
    vars: q.VarsChange | None = None


@dataclass
class _Batch:
    """What a batch of events computed, before it is written."""

    outcomes: list[FireResult | CorralError] = field(default_factory=list)
    writes: list[_Write] = field(default_factory=list)
    remembered: list[dict[str, Any]] = field(default_factory=list)


def _final_changes(writes: list[_Write]) -> list[q.StateChange]:
    """A machine that took several events in one batch is written once, in its
    final state; every event keeps its history row."""
    return list({w.change.id: w.change for w in writes}.values())


def _write_args(writes: list[_Write], final: list[q.StateChange],
                remembered: list[dict[str, Any]] | None = None) -> tuple[Any, ...]:
    return (final, [w.history for w in writes], [op for w in writes for op in w.operations],
            remembered or [], [w.vars for w in writes if w.vars is not None])


def _write_all(tx: EventTx, writes: list[_Write], final: list[q.StateChange],
               remembered: list[dict[str, Any]] | None = None) -> None:
    tx.write(*_write_args(writes, final, remembered))


class Engine:
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
        self._committer: GroupCommitter | None = None
        self._loop_committer: AsyncGroupCommitter | None = None
        # (kind, event) -> how to do it instead: events only a service fires,
        # because they change its own tables too (a pool's assign and release).
        self._reserved: dict[tuple[str, str], str] = {}

    def reserve_events(self, kind: str, events: Sequence[str], instead: str) -> None:
        """Refuse ``events`` of ``kind`` from :meth:`fire`; only a :meth:`unit`
        may fire them. ``instead`` tells the user what to do."""
        for event in events:
            self._reserved[(kind, event)] = instead

    @contextmanager
    def unit(self) -> Iterator[Unit]:
        """One transaction in which a caller changes its own tables and fires
        events (a pool's assignment row and its ``assign`` event, together).
        Machines are locked through the unit; everything commits at the end or
        nothing does."""
        with self.store.unit() as tx:
            unit = Unit(self, tx, self.clock())
            yield unit
        for write in unit.writes:
            source = write.history["source"]
            self.observer.event(write.result.kind, write.result.event, source, "accepted")
            self._log(write.result, source)

    # ------------------------------------------------------------ machines

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

    def get(self, kind: str, name: str) -> q.MachineRow:
        """Raises: UnknownMachine."""
        self.machines[kind]
        with self.store.unit() as tx:
            row = tx.get_machine(kind, name)
        if row is None:
            raise UnknownMachine(kind, name)
        return row

    def list_machines(
        self, kind: str, *, states: list[str] | None = None, failed: bool = False
    ) -> list[q.MachineRow]:
        """Machines of ``kind``, optionally only in ``states`` and/or failed ones.

        Raises:
            NotFound: a state the kind's machine does not have.
        """
        machine = self.machines[kind]
        for state in states or ():
            machine.state(state)
        wanted = states or None
        if failed:
            wanted = [s for s in (wanted or machine.definition.failed_states)
                      if machine.is_failed(s)]
        with self.store.unit() as tx:
            return tx.list_machines(kind, states=wanted)

    def describe(self, row: q.MachineRow, role: str = "admin") -> dict[str, Any]:
        """A machine as ``role`` sees it: its row, whether it has failed, the
        events its state accepts with who fires each, and those ``role`` may
        fire (the CLI and the HTTP API both show this)."""
        machine = self.machines[row.kind]
        accepted = machine.allowed_events(row.state)
        return {"name": row.name, "state": row.state, "failed": machine.is_failed(row.state),
                "state_entered_at": row.state_entered_at, "deadline": row.deadline,
                "counters": row.counters, "epoch": row.epoch, "attrs": readable(row.attrs),
                "vars": readable(row.vars or {}),
                "allowed_events": list(machine.allowed_events(row.state, role)),
                "accepted_events": {event: list(machine.firers(row.state, event))
                                    for event in accepted}}

    def history(
        self, kind: str, name: str, *, limit: int = 100, before_id: int | None = None
    ) -> list[q.HistoryEntry]:
        """The newest ``limit`` entries, newest first, older than ``before_id``.

        Payloads and reasons come back readable whatever was stored (see
        :func:`corral.payload.readable`): one bad row never fails a page.
        """
        row = self.get(kind, name)
        with self.store.unit() as tx:
            entries = tx.list_history(row.id, limit=limit, before_id=before_id)
        return [replace(e, payload=readable(e.payload), reason=readable_text(e.reason))
                for e in entries]

    # ------------------------------------------------------------ events

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
            batch = self._apply(requests, rows, stored)
            self._write(tx, batch.writes, batch.remembered)
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
            batch = self._apply(requests, rows, stored)
            if batch.writes or batch.remembered:
                await tx.write(*_write_args(batch.writes, _final_changes(batch.writes),
                                            batch.remembered))
        return self._committed(requests, batch, started)

    def _apply(self, requests: list[FireRequest], rows: dict[tuple[str, str], q.MachineState],
               stored: dict[tuple[str, str], Any]) -> _Batch:
        """Compute a batch's events against its locked rows, in order."""
        batch = _Batch()
        now = self.clock()
        for request in requests:
            if request.idempotency in stored:
                document = stored[request.idempotency]
                try:
                    check_key_reuse(document, request)
                except InvalidRequest as exc:
                    batch.outcomes.append(exc)
                else:
                    batch.outcomes.append(replay_outcome(document))
                continue
            outcome: FireResult | CorralError
            try:
                self._check(request)
                key = (request.kind, request.name)
                row = rows.get(key)
                if row is None:
                    raise UnknownMachine(request.kind, request.name)
                computed = self.machines[request.kind].compute(
                    row.state, row.counters, request.event, name=request.name,
                    payload=request.payload, role=request.firer)
                write = self._prepare(row, computed, now=now, source=request.source,
                                      actor=request.actor, reason=request.reason,
                                      payload=request.payload, operation_id=None)
                rows[key] = write.change.applied_to(row)
                batch.writes.append(write)
                outcome = write.result
            except CorralError as exc:
                outcome = exc
            batch.outcomes.append(outcome)
            if request.idempotency is not None:
                document = outcome_document(outcome, request)
                stored[request.idempotency] = document
                row = rows.get((request.kind, request.name))
                batch.remembered.append({"scope": request.idempotency[0],
                                         "key": request.idempotency[1],
                                         "machine_id": row.id if row else None,
                                         "outcome": document, "created_at": now})
        return batch

    def _committed(self, requests: list[FireRequest], batch: _Batch,
                   started: float) -> list[FireResult | CorralError]:
        """Metrics and log lines of a committed batch; its outcomes."""
        self.observer.committed(time.perf_counter() - started, len(requests))
        for request, outcome in zip(requests, batch.outcomes, strict=True):
            self.observer.event(request.kind, request.event, request.source,
                                _outcome_label(outcome))
        for write in batch.writes:
            self._log(write.result, write.history["source"])
        return batch.outcomes

    def start_group_commit(self, *, threads: int = 2, max_batch: int = 64) -> None:
        """Let concurrent :meth:`fire` calls share transactions (see :mod:`.group`)."""
        from corral.engine.group import GroupCommitter

        if self._committer is None:
            self._committer = GroupCommitter(self, threads=threads, max_batch=max_batch)

    async def start_loop_group_commit(self) -> None:
        """With group commit on and PostgreSQL, let :meth:`fire_async` calls from
        the running event loop share transactions on the loop itself (see
        :class:`~corral.engine.group.AsyncGroupCommitter`), with as many
        connections as there are committer threads. Other callers keep the
        threads. Call :meth:`stop_loop_group_commit` before the loop ends."""
        from corral.engine.group import AsyncGroupCommitter

        threaded = self._committer
        if (threaded is None or self._loop_committer is not None
                or not self.store.supports_async):
            return
        self._loop_committer = AsyncGroupCommitter(self, connections=threaded.threads,
                                                   max_batch=threaded.max_batch)

    async def stop_loop_group_commit(self) -> None:
        """Finish the events queued on the loop and close its connections; later
        :meth:`fire_async` calls use the committer threads."""
        committer, self._loop_committer = self._loop_committer, None
        if committer is not None:
            await committer.aclose()

    def close(self) -> None:
        """Stop group commit threads (pending events are finished first)."""
        if self._committer is not None:
            self._committer.close()
            self._committer = None

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
            write = self._prepare(row, outcome, now=now, source="operator", actor=actor,
                                  reason=reason, payload=None, operation_id=None)
            self._write(tx, [write])
        self._log(write.result, "operator")
        return write.result

    # ------------------------------------------------------------ idempotency

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
                deleted = tx.delete_idempotency_keys_before(cutoff, batch)
            forgotten += deleted
            if deleted < batch:
                break
        if forgotten:
            log.info("idempotency_keys_expired", count=forgotten, before=cutoff.isoformat())
        return forgotten

    # ------------------------------------------------------------ timeouts

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
            with self.store.events() as tx:
                now = self.clock()
                rows = tx.claim_due_machines(now, batch)
                writes = [w for w in (self._timeout(row, now) for row in rows) if w]
                self._write(tx, writes)
            for write in writes:
                self._log(write.result, "timeout")
                lag = (write.history["payload"] or {}).get("lag_seconds")
                if lag is not None:
                    self.observer.timeout(write.result.kind, lag)
            fired += len(writes)
            if len(rows) < batch:
                break
        return fired

    def _timeout(self, row: q.MachineState, now: datetime) -> _Write | None:
        machine = self.machines[row.kind] if row.kind in self.machines else None
        try:
            if machine is None:
                raise NotFound(f"no definition for kind {row.kind!r}")
            outcome = machine.compute(row.state, row.counters, TIMEOUT_EVENT, name=row.name)
        except (EventNotAllowed, NotFound) as exc:
            # The definition changed under a stored deadline (a state lost its
            # timeout, or a kind was removed): clear the deadline rather than
            # claiming this row forever.
            log.warning("stale_deadline_cleared", kind=row.kind, name=row.name, state=row.state,
                        error=str(exc))
            outcome = Outcome(from_state=row.state, to_state=row.state, event=TIMEOUT_EVENT,
                              entered=False, counters=row.counters, operations=(), timeout=None)
            change = q.StateChange(id=row.id, state=row.state,
                                   state_entered_at=row.state_entered_at, deadline=None,
                                   counters=row.counters, epoch=row.epoch, updated_at=now)
            return _Write(change=change, history={
                "machine_id": row.id, "epoch": row.epoch, "from_state": row.state,
                "to_state": row.state, "event": TIMEOUT_EVENT, "source": "timeout",
                "actor": None, "reason": f"deadline cleared: {exc}", "at": now,
                "payload": None, "operation_id": None,
            }, operations=[], result=self._result(row, outcome, row.epoch))
        # How late the sweep fired, for operators and the timeout-lag metric.
        payload = {"lag_seconds": round((now - row.deadline).total_seconds(), 3)
                   if row.deadline else None}
        return self._prepare(row, outcome, now=now, source="timeout", actor=None, reason=None,
                             payload=payload, operation_id=None)

    # ------------------------------------------------------------ operations

    def lease_operations(self, *, owner: str, limit: int, lease_seconds: float
                         ) -> list[q.OperationRow]:
        """Claim up to ``limit`` runnable operations for ``owner``."""
        with self.store.unit() as tx:
            now = self.clock()
            return tx.lease_operations(now=now, owner=owner, limit=limit,
                                      lease_until=now + timedelta(seconds=lease_seconds))

    def machine_by_id(self, machine_id: int) -> q.MachineRow | None:
        with self.store.unit() as tx:
            return tx.get_machine_by_id(machine_id)

    def retry_operation(self, op: q.OperationRow, *, delay: float, error: str) -> None:
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
        self, op: q.OperationRow, *, ok: bool, detail: Mapping[str, Any] | None = None,
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
                return self._ignored(row, event, f"operation {op.id} already {status}")
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
                return self._ignored(row, event, note)
            computed = machine.compute(row.state, row.counters, event, name=row.name,
                                       payload=result_doc, role="operation")
            write = self._prepare(row, computed, now=now, source="operation", actor=None,
                                  reason=error, payload=result_doc, operation_id=op.id)
            _write_all(tx, [write], [write.change])
            tx.finish_operation(op.id, status="done" if ok else "failed",
                               result=result_doc, error=error, now=now)
        self._log(write.result, "operation", operation_id=op.id)
        self.observer.operation(op.kind, "ok" if ok else "failed")
        return write.result

    # ------------------------------------------------------------ internals

    def _lock(self, tx: EventTx, kind: str, name: str) -> q.MachineState:
        row = tx.lock_machine(kind, name)
        if row is None:
            raise UnknownMachine(kind, name)
        return row

    def _deadline(self, now: datetime, timeout: float | None) -> datetime | None:
        if timeout is None:
            return None
        return now + timedelta(seconds=timeout * self.timeout_scale)

    def _result(self, row: q.MachineState, outcome: Outcome, epoch: int) -> FireResult:
        return FireResult(kind=row.kind, name=row.name, event=outcome.event,
                          from_state=outcome.from_state, to_state=outcome.to_state, epoch=epoch,
                          entered=outcome.entered, operations=outcome.operations)

    def _ignored(self, row: q.MachineState, event: str, note: str) -> FireResult:
        return FireResult(kind=row.kind, name=row.name, event=event, from_state=row.state,
                          to_state=row.state, epoch=row.epoch, entered=False, ignored=True,
                          note=note)

    def _prepare(
        self,
        row: q.MachineState,
        outcome: Outcome,
        *,
        now: datetime,
        source: str,
        actor: str | None,
        reason: str | None,
        payload: Any,
        operation_id: int | None,
    ) -> _Write:
        if outcome.entered:
            epoch = row.epoch + 1
            deadline = self._deadline(now, outcome.timeout)
            if outcome.deadline_var is not None:
                deadline = _timestamp(outcome.vars.get(outcome.deadline_var))
            change = q.StateChange(id=row.id, state=outcome.to_state, state_entered_at=now,
                                   deadline=deadline,
                                   counters=outcome.counters, epoch=epoch, updated_at=now)
        else:
            epoch = row.epoch
            change = q.StateChange(id=row.id, state=row.state,
                                   state_entered_at=row.state_entered_at, deadline=row.deadline,
                                   counters=outcome.counters, epoch=epoch, updated_at=now)
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
        variables = (q.VarsChange(id=row.id, values=outcome.vars, replace=outcome.clear_vars)
                     if outcome.changes_vars else None)
        return _Write(change=change, history=history, operations=operations,
                      result=self._result(row, outcome, epoch), vars=variables)

    def _write(self, tx: EventTx, writes: list[_Write],
               remembered: list[dict[str, Any]] | None = None) -> None:
        if writes or remembered:
            _write_all(tx, writes, _final_changes(writes), remembered)

    def _log(self, result: FireResult, source: str, **extra: Any) -> None:
        log.info("transition", **{result.kind: result.name}, from_state=result.from_state,
                 to_state=result.to_state, _event=result.event, source=source,
                 epoch=result.epoch, **extra)

    def machine(self, kind: str) -> StateMachine:
        return self.machines[kind]


class Unit:
    """A transaction opened by :meth:`Engine.unit`: lock machines, fire events
    on them, and use ``tx`` (the store's transaction) for the caller's own
    tables."""

    def __init__(self, engine: Engine, tx: Tx, now: datetime) -> None:
        self.engine = engine
        self.tx = tx
        self.now = now
        self.writes: list[_Write] = []

    def lock(self, kind: str, name: str) -> q.MachineState:
        """Raises: UnknownMachine."""
        self.engine.machines[kind]
        row = self.tx.lock_machine(kind, name)
        if row is None:
            raise UnknownMachine(kind, name)
        return row

    def create(self, kind: str, name: str, attrs: Mapping[str, Any], *, actor: str | None,
               reason: str | None) -> q.MachineState:
        """Create a machine in its initial state; returns its (locked) row."""
        [row] = self.create_many(kind, {name: attrs}, actor=actor, reason=reason)
        return row

    def create_many(self, kind: str, inventory: Mapping[str, Mapping[str, Any]], *,
                    actor: str | None, reason: str | None) -> list[q.MachineState]:
        """Create machines in their initial state; their history and entry
        operations are written in one batch."""
        machine = self.engine.machines[kind]
        outcome = machine.enter("", machine.initial, CREATE_EVENT, {})
        deadline = self.engine._deadline(self.now, outcome.timeout)
        writes, rows = [], []
        for name, attrs in inventory.items():
            machine_id = self.tx.insert_machine(kind=kind, name=name,
                                          state=machine.initial, attrs=attrs, now=self.now,
                                          deadline=deadline)
            placeholder = q.MachineState(id=machine_id, kind=kind, name=name, state="",
                                         state_entered_at=self.now, deadline=None,
                                         counters={}, epoch=0)
            write = self.engine._prepare(placeholder, outcome, now=self.now,
                                         source="operator", actor=actor, reason=reason,
                                         payload=None, operation_id=None)
            writes.append(write)
            rows.append(write.change.applied_to(placeholder))
        _write_all(self.tx, writes, [w.change for w in writes])
        self.writes.extend(writes)
        return rows

    def fire(
        self, row: q.MachineState, event: str, *, source: str, payload: Any = None,
        actor: str | None = None, reason: str | None = None,
    ) -> q.MachineState:
        """Apply ``event`` to the locked ``row``, fired by the role of
        ``source``; returns the row as it is now.

        Raises:
            EventNotAllowed, Forbidden, InvalidRequest: nothing of the unit will
            commit unless the caller handles it.
        """
        machine = self.engine.machines[row.kind]
        check_json(payload, "payload")
        check_text(reason, "reason")
        outcome = machine.compute(row.state, row.counters, event, name=row.name,
                                  payload=payload, role=SOURCE_ROLES[source])
        write = self.engine._prepare(row, outcome, now=self.now, source=source, actor=actor,
                                     reason=reason, payload=payload, operation_id=None)
        _write_all(self.tx, [write], [write.change])
        self.writes.append(write)
        return write.change.applied_to(row)

    @property
    def results(self) -> list[FireResult]:
        return [w.result for w in self.writes]
