"""The values the store reads and writes, independent of any backend.

The engine and the services see machines, history entries, operations,
tokens and pool assignments only as these; no database type leaves ``store/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corral.names import Source

# Where a history row's event came from (the history.source column).
HISTORY_SOURCES = tuple(Source)


@dataclass(frozen=True, kw_only=True, slots=True)
class MachineState:
    """What an event reads and rewrites: the row minus inventory and timestamps.

    The hot paths (lock one machine, claim due machines) load only this.
    """

    id: int
    kind: str
    name: str
    state: str
    state_entered_at: datetime
    deadline: datetime | None
    counters: dict[str, int]
    epoch: int

    @classmethod
    def from_row(cls, row: Any) -> MachineState:
        m = row._mapping
        return cls(id=m["id"], kind=m["kind"], name=m["name"], state=m["state"],
                   state_entered_at=m["state_entered_at"], deadline=m["deadline"],
                   counters=dict(m["counters"] or {}), epoch=m["epoch"])


@dataclass(frozen=True, kw_only=True, slots=True)
class MachineRow(MachineState):
    """A whole machine row, for operators and operation backends."""

    attrs: dict[str, Any]
    created_at: datetime | None = None
    updated_at: datetime | None = None
    vars: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Any) -> MachineRow:
        m = row._mapping
        return cls(
            id=m["id"],
            kind=m["kind"],
            name=m["name"],
            state=m["state"],
            state_entered_at=m["state_entered_at"],
            deadline=m["deadline"],
            counters=dict(m["counters"] or {}),
            epoch=m["epoch"],
            attrs=dict(m["attrs"] or {}),
            created_at=m.get("created_at"),
            updated_at=m.get("updated_at"),
            vars=dict(m.get("vars") or {}),
        )


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    id: int
    machine_id: int
    epoch: int
    from_state: str
    to_state: str
    event: str
    source: str
    actor: str | None
    reason: str | None
    at: datetime
    payload: Any
    operation_id: int | None

    @classmethod
    def from_row(cls, row: Any) -> HistoryEntry:
        return cls(**dict(row._mapping))


@dataclass(frozen=True, kw_only=True)
class OperationRow:
    id: int
    machine_id: int
    machine_epoch: int
    kind: str
    target: str
    payload: dict[str, Any]
    status: str
    attempts: int
    run_after: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    result: Any
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> OperationRow:
        return cls(**dict(row._mapping))


@dataclass(frozen=True, kw_only=True)
class StateChange:
    """What one accepted event writes to a machine row (see ``update_machines``)."""

    id: int
    state: str
    state_entered_at: datetime
    deadline: datetime | None
    counters: Mapping[str, int]
    epoch: int
    updated_at: datetime

    def applied_to(self, row: MachineState) -> MachineState:
        """``row`` as it is after this change."""
        return MachineState(id=row.id, kind=row.kind, name=row.name, state=self.state,
                            state_entered_at=self.state_entered_at, deadline=self.deadline,
                            counters=dict(self.counters), epoch=self.epoch)


@dataclass(frozen=True, kw_only=True)
class VarsChange:
    """A locked machine's vars after an event: ``values`` replace them all
    (``replace``) or are merged over them."""

    id: int
    values: Mapping[str, Any]
    replace: bool


@dataclass(frozen=True, kw_only=True)
class TokenRow:
    id: int
    name: str
    role: str
    machine_id: int | None
    board: str | None
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class Assignment:
    pool: str
    job_run_id: str
    assigned_at: datetime


@dataclass(frozen=True, kw_only=True)
class StreamEntry:
    """A history row as the event stream gives it: with its machine's kind
    and name."""

    entry: HistoryEntry
    kind: str
    name: str


@dataclass(frozen=True, kw_only=True)
class WriteSet:
    """Everything one transaction writes for the events it planned: the
    machines' new state (each machine once, in its final state), their
    history rows, the outbox rows, outcomes kept for idempotent replay, and
    vars changes. The planner builds it; ``tx.write`` takes it whole."""

    changes: Sequence[StateChange] = ()
    history: Sequence[Mapping[str, Any]] = ()
    operations: Sequence[Mapping[str, Any]] = ()
    idempotency: Sequence[Mapping[str, Any]] = ()
    vars_changes: Sequence[VarsChange] = ()

    def __bool__(self) -> bool:
        """Whether there is anything to write."""
        return bool(self.changes or self.history or self.operations or self.idempotency
                    or self.vars_changes)


# Which operation kinds a worker runs: (True, names) only those, (False,
# names) all but those; None: all.
Kinds = tuple[bool, Sequence[str]] | None

# The longest piece of console text the capture writes at once (characters):
# a read from an offset looks back at most this far for the piece holding it.
MAX_CONSOLE_CHUNK = 4096
