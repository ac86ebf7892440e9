"""The named statements of the SQLAlchemy Core backends (SQLite; the parts of
PostgreSQL off the event write path).

Each takes a SQLAlchemy ``Connection`` inside a transaction its caller (the
store) owns; none commits. Statements are built once at import time so that
SQLAlchemy's compiled cache and psycopg's prepared statements are hit on the
hot path (one event = lock, update, insert history, commit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)

from corral.store.schema import (
    bootres_imports,
    bootres_published,
    controller_slots,
    history,
    idempotency_keys,
    jobs,
    machine_state_counts,
    machines,
    operations,
    pool_assignments,
    tokens,
    webhooks,
)
from corral.store.values import (
    Assignment,
    HistoryEntry,
    MachineRow,
    MachineState,
    OperationRow,
    StateChange,
    StreamEntry,
    TokenRow,
    VarsChange,
)

# ---------------------------------------------------------------- machines

_STATE_COLUMNS = (
    machines.c.id,
    machines.c.kind,
    machines.c.name,
    machines.c.state,
    machines.c.state_entered_at,
    machines.c.deadline,
    machines.c.counters,
    machines.c.epoch,
)
_MACHINE_COLUMNS = (*_STATE_COLUMNS, machines.c.attrs, machines.c.created_at,
                    machines.c.updated_at, machines.c.vars)

_select_machine = select(*_MACHINE_COLUMNS).where(
    machines.c.kind == bindparam("kind"), machines.c.name == bindparam("name")
)
_lock_machine = select(*_STATE_COLUMNS).where(
    machines.c.kind == bindparam("kind"), machines.c.name == bindparam("name")
).with_for_update()


def get_machine(conn: Connection, kind: str, name: str) -> MachineRow | None:
    row = conn.execute(_select_machine, {"kind": kind, "name": name}).first()
    return MachineRow.from_row(row) if row else None


def lock_machine(conn: Connection, kind: str, name: str) -> MachineState | None:
    """Read a machine's state and lock its row until the transaction ends."""
    row = conn.execute(_lock_machine, {"kind": kind, "name": name}).first()
    return MachineState.from_row(row) if row else None


def lock_machine_by_id(conn: Connection, machine_id: int) -> MachineState | None:
    row = conn.execute(
        select(*_STATE_COLUMNS).where(machines.c.id == machine_id).with_for_update()
    ).first()
    return MachineState.from_row(row) if row else None


def lock_machines(conn: Connection, keys: Sequence[tuple[str, str]]) -> list[MachineState]:
    """Lock several machines, in id order (so two callers never deadlock)."""
    query = (
        select(*_STATE_COLUMNS)
        .where(tuple_(machines.c.kind, machines.c.name).in_(list(keys)))
        .order_by(machines.c.id)
        .with_for_update()
    )
    return [MachineState.from_row(r) for r in conn.execute(query)]


def insert_machine(
    conn: Connection,
    *,
    kind: str,
    name: str,
    state: str,
    attrs: Mapping[str, Any],
    now: datetime,
    deadline: datetime | None,
) -> int:
    result = conn.execute(
        insert(machines),
        {
            "kind": kind,
            "name": name,
            "state": state,
            "state_entered_at": now,
            "deadline": deadline,
            "counters": {},
            "epoch": 1,
            "attrs": dict(attrs),
            "created_at": now,
            "updated_at": now,
            "vars": {},
        },
    )
    return new_id(result)


def new_id(result: Any) -> int:
    """The id of the row an insert just wrote (``RETURNING`` on PostgreSQL,
    the driver's last row id on SQLite, MariaDB and MySQL)."""
    key = result.inserted_primary_key
    assert key is not None
    assert key[0] is not None
    return int(key[0])


def update_machine_attrs(
    conn: Connection, machine_id: int, attrs: Mapping[str, Any], now: datetime
) -> None:
    conn.execute(
        update(machines).where(machines.c.id == machine_id).values(attrs=dict(attrs),
                                                                   updated_at=now)
    )


def list_machines(
    conn: Connection, kind: str, *, states: Sequence[str] | None = None,
    after: str | None = None, limit: int | None = None,
) -> list[MachineRow]:
    """Machines of ``kind`` by name; a page is the ``limit`` names after
    ``after`` (keyset paging on the unique (kind, name) index)."""
    query = select(*_MACHINE_COLUMNS).where(machines.c.kind == kind)
    if states is not None:
        query = query.where(machines.c.state.in_(list(states)))
    if after is not None:
        query = query.where(machines.c.name > after)
    query = query.order_by(machines.c.name)
    if limit is not None:
        query = query.limit(limit)
    return [MachineRow.from_row(r) for r in conn.execute(query)]


_update_machine = (
    update(machines)
    .where(machines.c.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        state_entered_at=bindparam("b_state_entered_at"),
        deadline=bindparam("b_deadline"),
        counters=bindparam("b_counters"),
        epoch=bindparam("b_epoch"),
        updated_at=bindparam("b_updated_at"),
    )
)


def update_machines(conn: Connection, changes: Sequence[StateChange]) -> None:
    """Write the new state of one or many locked machine rows."""
    if not changes:
        return
    conn.execute(
        _update_machine,
        [
            {
                "b_id": c.id,
                "b_state": c.state,
                "b_state_entered_at": c.state_entered_at,
                "b_deadline": c.deadline,
                "b_counters": dict(c.counters),
                "b_epoch": c.epoch,
                "b_updated_at": c.updated_at,
            }
            for c in changes
        ],
    )




def update_vars(conn: Connection, changes: Sequence[VarsChange]) -> None:
    """Apply vars changes in order (read, merge, write: the rows are locked)."""
    for change in changes:
        merged = dict(change.values)
        if not change.replace:
            current = conn.execute(select(machines.c.vars).where(machines.c.id == change.id)
                                   ).scalar()
            merged = dict(current or {}) | merged
        conn.execute(update(machines).where(machines.c.id == change.id).values(vars=merged))


def claim_due_machines(conn: Connection, now: datetime, limit: int) -> list[MachineState]:
    """Lock up to ``limit`` machines whose deadline has passed.

    Rows another transaction holds are skipped (``SKIP LOCKED``), so any number
    of sweepers can share a database and each due row is claimed by one.
    """
    query = (
        select(*_STATE_COLUMNS)
        .where(machines.c.deadline <= now)
        .order_by(machines.c.deadline)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [MachineState.from_row(r) for r in conn.execute(query)]


# ---------------------------------------------------------------- history

_insert_history = insert(history)


def insert_history(conn: Connection, entries: Sequence[Mapping[str, Any]]) -> None:
    """Append history rows (keys are the ``history`` columns except ``id``)."""
    if entries:
        conn.execute(_insert_history, list(entries))


def list_history(
    conn: Connection, machine_id: int, *, limit: int = 100, before_id: int | None = None
) -> list[HistoryEntry]:
    """The newest ``limit`` entries, newest first; page with ``before_id``."""
    query = select(history).where(history.c.machine_id == machine_id)
    if before_id is not None:
        query = query.where(history.c.id < before_id)
    query = query.order_by(history.c.id.desc()).limit(limit)
    return [HistoryEntry.from_row(r) for r in conn.execute(query)]


def stream_history(conn: Connection, *, after: int, upto: int, limit: int,
                   filters: Mapping[str, Sequence[str]]) -> list[StreamEntry]:
    """History rows with ``after < id <= upto`` in id order, with their
    machine's kind and name; ``filters`` keeps those whose ``kind``, ``name``,
    ``state`` (the state entered), ``event`` or ``source`` is among the given."""
    columns = {"kind": machines.c.kind, "name": machines.c.name, "state": history.c.to_state,
               "event": history.c.event, "source": history.c.source}
    query = (select(history, machines.c.kind.label("machine_kind"),
                    machines.c.name.label("machine_name"))
             .join(machines, machines.c.id == history.c.machine_id)
             .where(history.c.id > after, history.c.id <= upto))
    for key, wanted in filters.items():
        if wanted:
            query = query.where(columns[key].in_(list(wanted)))
    rows = conn.execute(query.order_by(history.c.id).limit(limit))
    result = []
    for row in rows:
        fields = dict(row._mapping)
        kind, name = fields.pop("machine_kind"), fields.pop("machine_name")
        result.append(StreamEntry(entry=HistoryEntry(**fields), kind=kind, name=name))
    return result


_WEBHOOK_COLUMNS = [c for c in webhooks.c if c.name != "secret"]


def add_webhook(conn: Connection, *, name: str, url: str, filters: Mapping[str, Any],
                secret: str, cursor: int, now: datetime) -> None:
    """Raises DuplicateKey (through the store) when the name is taken."""
    conn.execute(insert(webhooks).values(
        name=name, url=url, filters=dict(filters), secret=secret, cursor=cursor, delivered=0,
        status="ok", failures=0, last_error=None, next_attempt_at=now, lease_owner=None,
        lease_until=None, created_at=now))


def list_webhooks(conn: Connection) -> list[dict[str, Any]]:
    """Every subscription, without its secret."""
    rows = conn.execute(select(*_WEBHOOK_COLUMNS).order_by(webhooks.c.name))
    return [dict(r._mapping) for r in rows]


def remove_webhook(conn: Connection, name: str) -> bool:
    return int(conn.execute(delete(webhooks).where(webhooks.c.name == name)).rowcount) == 1


def claim_webhooks(conn: Connection, *, now: datetime, owner: str, until: datetime,
                   limit: int) -> list[dict[str, Any]]:
    """Lease up to ``limit`` subscriptions due for delivery (with their
    secrets): one process delivers a subscription at a time, so its events
    go out in order."""
    ids = [r[0] for r in conn.execute(
        select(webhooks.c.id)
        .where(webhooks.c.next_attempt_at <= now,
               or_(webhooks.c.lease_until.is_(None), webhooks.c.lease_until < now))
        .order_by(webhooks.c.next_attempt_at).limit(limit)
        .with_for_update(skip_locked=True))]
    if not ids:
        return []
    conn.execute(update(webhooks).where(webhooks.c.id.in_(ids))
                 .values(lease_owner=owner, lease_until=until))
    rows = conn.execute(select(webhooks).where(webhooks.c.id.in_(ids)))
    return [dict(r._mapping) for r in rows]


def finish_webhook_pass(conn: Connection, webhook_id: int, *, owner: str, cursor: int,
                        delivered: int, failures: int, status: str, last_error: str | None,
                        next_attempt_at: datetime) -> bool:
    """Record a delivery pass and give the lease back; False when the lease
    was lost (another process took over after it expired)."""
    result = conn.execute(
        update(webhooks)
        .where(webhooks.c.id == webhook_id, webhooks.c.lease_owner == owner)
        .values(cursor=cursor, delivered=webhooks.c.delivered + delivered, failures=failures,
                status=status, last_error=last_error, next_attempt_at=next_attempt_at,
                lease_owner=None, lease_until=None))
    return int(result.rowcount) == 1


def newest_history_id(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(history.c.id), 0))).scalar_one())


# ---------------------------------------------------------------- operations

def list_operations(conn: Connection, machine_id: int, *, limit: int = 200
                    ) -> list[OperationRow]:
    """A machine's newest ``limit`` operations, newest first."""
    rows = conn.execute(select(operations).where(operations.c.machine_id == machine_id)
                        .order_by(operations.c.id.desc()).limit(limit))
    return [OperationRow.from_row(r) for r in rows]


_insert_operation = insert(operations)


_NEW_OPERATION = {"status": "pending", "attempts": 0, "lease_owner": None,
                  "lease_expires_at": None, "result": None, "error": None, "finished_at": None}


def insert_operations(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write new outbox rows in the caller's transaction: each row gives
    machine_id, machine_epoch, kind, target, payload and created_at; it is
    pending and runnable from created_at."""
    if rows:
        conn.execute(_insert_operation, [_NEW_OPERATION | dict(r) | {"run_after": r["created_at"]}
                                         for r in rows])


def lease_operations(
    conn: Connection, *, now: datetime, owner: str, lease_until: datetime, limit: int
) -> list[OperationRow]:
    """Claim operations to run: pending ones that are due, and running ones
    whose lease has expired (their worker died). Each claim adds an attempt."""
    claimable = (
        select(operations.c.id)
        .where(
            or_(
                and_(operations.c.status == "pending", operations.c.run_after <= now),
                and_(operations.c.status == "running", operations.c.lease_expires_at < now),
            )
        )
        .order_by(operations.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r[0] for r in conn.execute(claimable)]
    if not ids:
        return []
    result = conn.execute(
        update(operations)
        .where(operations.c.id.in_(ids))
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=lease_until,
            attempts=operations.c.attempts + 1,
        )
        .returning(*operations.c)
    )
    return sorted((OperationRow.from_row(r) for r in result), key=lambda op: op.id)


def lock_operation(conn: Connection, operation_id: int) -> OperationRow | None:
    row = conn.execute(
        select(operations).where(operations.c.id == operation_id).with_for_update()
    ).first()
    return OperationRow.from_row(row) if row else None


def finish_operation(
    conn: Connection,
    operation_id: int,
    *,
    status: str,
    result: Any,
    error: str | None,
    now: datetime,
) -> None:
    conn.execute(
        update(operations)
        .where(operations.c.id == operation_id)
        .values(status=status, result=result, error=error, finished_at=now,
                lease_owner=None, lease_expires_at=None)
    )


def retry_operation(
    conn: Connection, operation_id: int, *, run_after: datetime, error: str
) -> None:
    """Put a leased operation back in the queue after a failed attempt."""
    conn.execute(
        update(operations)
        .where(operations.c.id == operation_id)
        .values(status="pending", run_after=run_after, error=error,
                lease_owner=None, lease_expires_at=None)
    )


_select_machine_by_id = select(*_MACHINE_COLUMNS).where(machines.c.id == bindparam("id"))


def get_machine_by_id(conn: Connection, machine_id: int) -> MachineRow | None:
    row = conn.execute(_select_machine_by_id, {"id": machine_id}).first()
    return MachineRow.from_row(row) if row else None


# ---------------------------------------------------------------- tokens




_TOKEN_COLUMNS = (tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.machine_id,
                  machines.c.name.label("board"), tokens.c.secret_hash, tokens.c.created_at,
                  tokens.c.revoked_at)
_tokens_with_board = tokens.outerjoin(machines, machines.c.id == tokens.c.machine_id)


def get_token(conn: Connection, token_id: int) -> TokenRow | None:
    row = conn.execute(select(*_TOKEN_COLUMNS).select_from(_tokens_with_board)
                       .where(tokens.c.id == token_id)).first()
    return TokenRow(**row._mapping) if row else None


def get_tokens(conn: Connection, token_ids: Iterable[int]) -> list[TokenRow]:
    """The tokens of these ids that exist (revoked ones included)."""
    rows = conn.execute(select(*_TOKEN_COLUMNS).select_from(_tokens_with_board)
                        .where(tokens.c.id.in_(sorted(set(token_ids)))))
    return [TokenRow(**r._mapping) for r in rows]


def list_tokens(conn: Connection) -> list[TokenRow]:
    rows = conn.execute(select(*_TOKEN_COLUMNS).select_from(_tokens_with_board)
                        .order_by(tokens.c.name))
    return [TokenRow(**r._mapping) for r in rows]


def save_token(
    conn: Connection, *, name: str, role: str, machine_id: int | None, secret_hash: str,
    now: datetime,
) -> int:
    """Create the token ``name`` or give it a new secret (rotation); returns its id."""
    existing = conn.execute(select(tokens.c.id).where(tokens.c.name == name)
                            .with_for_update()).scalar()
    values = {"role": role, "machine_id": machine_id, "secret_hash": secret_hash,
              "created_at": now, "revoked_at": None}
    if existing is not None:
        conn.execute(update(tokens).where(tokens.c.id == existing).values(**values))
        return int(existing)
    return new_id(conn.execute(insert(tokens), {"name": name, **values}))


def revoke_token(conn: Connection, name: str, now: datetime) -> bool:
    result = conn.execute(update(tokens).where(tokens.c.name == name,
                                               tokens.c.revoked_at.is_(None))
                          .values(revoked_at=now))
    return bool(result.rowcount)


# ---------------------------------------------------------------- idempotency


def get_idempotent_outcomes(
    conn: Connection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Any]:
    """Stored outcomes of earlier requests, by (scope, key)."""
    if not keys:
        return {}
    rows = conn.execute(
        select(idempotency_keys.c.scope, idempotency_keys.c.key, idempotency_keys.c.outcome)
        .where(tuple_(idempotency_keys.c.scope, idempotency_keys.c.key).in_(list(keys)))
    )
    return {(scope, key): outcome for scope, key, outcome in rows}


def insert_idempotent_outcomes(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(insert(idempotency_keys), list(rows))


def controller_slot_count(conn: Connection, controller: str) -> int:
    return int(conn.execute(select(func.count()).select_from(controller_slots)
                            .where(controller_slots.c.controller == controller)).scalar_one())


def add_controller_slots(conn: Connection, controller: str, first: int, last: int) -> None:
    """Create free slots ``first`` to ``last - 1`` (another process creating
    the same ones at once makes this raise ``DuplicateKey``)."""
    conn.execute(insert(controller_slots), [
        {"controller": controller, "slot": slot, "holder": None, "expires_at": None}
        for slot in range(first, last)])


def take_controller_slot(conn: Connection, controller: str, slot: int, *, holder: str,
                         now: datetime, until: datetime) -> bool:
    """Take one slot if it is free or its holder's time is up. Two takers of
    one slot serialize on its row: the second re-reads it after the first
    commits and finds it held."""
    result = conn.execute(
        update(controller_slots)
        .where(controller_slots.c.controller == controller, controller_slots.c.slot == slot,
               or_(controller_slots.c.holder.is_(None), controller_slots.c.expires_at < now))
        .values(holder=holder, expires_at=until))
    return int(result.rowcount) == 1


def free_controller_slot(conn: Connection, controller: str, slot: int, holder: str) -> None:
    conn.execute(
        update(controller_slots)
        .where(controller_slots.c.controller == controller, controller_slots.c.slot == slot,
               controller_slots.c.holder == holder)
        .values(holder=None, expires_at=None))


def delete_idempotency_keys_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Forget up to ``limit`` of the oldest keys stored before ``cutoff``.

    Rows another transaction holds are skipped (``SKIP LOCKED``; SQLite's
    writers take turns anyway), so several workers expiring at once neither
    wait for each other nor collide. The keys are read first, then deleted
    by key: MariaDB and MySQL take no ``LIMIT`` in an ``IN`` subquery.
    """
    keys = [tuple(r) for r in conn.execute(
        select(idempotency_keys.c.scope, idempotency_keys.c.key)
        .where(idempotency_keys.c.created_at < cutoff)
        .order_by(idempotency_keys.c.created_at).limit(limit)
        .with_for_update(skip_locked=True))]
    if not keys:
        return 0
    result = conn.execute(delete(idempotency_keys).where(
        tuple_(idempotency_keys.c.scope, idempotency_keys.c.key).in_(keys)))
    return int(result.rowcount)


# ---------------------------------------------------------------- pool assignments




def _assignment(row: Any) -> Assignment:
    return Assignment(pool=row.cb_pool_name, job_run_id=row.job_run_id,
                      assigned_at=row.assigned_at)


def pool_holder(conn: Connection, pool: str) -> str | None:
    """The job holding ``pool``, if any."""
    return conn.execute(select(pool_assignments.c.job_run_id)
                        .where(pool_assignments.c.cb_pool_name == pool)).scalar()


def assign_pool(conn: Connection, pool: str, job_run_id: str, now: datetime) -> None:
    """Record that ``job_run_id`` holds ``pool``; the primary key refuses a second
    holder (the caller also holds the pool machine's row lock)."""
    conn.execute(insert(pool_assignments), {"cb_pool_name": pool, "job_run_id": job_run_id,
                                            "assigned_at": now})


def unassign_pools(conn: Connection, pools: Sequence[str], job_run_id: str) -> int:
    result = conn.execute(pool_assignments.delete().where(
        pool_assignments.c.cb_pool_name.in_(list(pools)),
        pool_assignments.c.job_run_id == job_run_id))
    return int(result.rowcount)


def list_assignments(conn: Connection, *, job_run_id: str | None = None) -> list[Assignment]:
    query = select(pool_assignments).order_by(pool_assignments.c.cb_pool_name)
    if job_run_id is not None:
        query = query.where(pool_assignments.c.job_run_id == job_run_id)
    return [_assignment(r) for r in conn.execute(query)]


def lock_idle_pools(
    conn: Connection, *, kind: str, state: str, attrs: Mapping[str, str], limit: int
) -> list[MachineState]:
    """Lock up to ``limit`` machines of ``kind`` in ``state`` whose attrs match and
    that no job holds, skipping rows another transaction has locked (racing
    acquirers take different pools)."""
    held = select(pool_assignments.c.cb_pool_name).where(
        pool_assignments.c.cb_pool_name == machines.c.name)
    query = select(*_STATE_COLUMNS).where(machines.c.kind == kind, machines.c.state == state,
                                          ~held.exists())
    for key, value in attrs.items():
        query = query.where(machines.c.attrs[key].as_string() == value)
    query = query.order_by(machines.c.name).limit(limit).with_for_update(skip_locked=True)
    return [MachineState.from_row(r) for r in conn.execute(query)]


# ---------------------------------------------------------------- monitoring


def count_machines_by_state(conn: Connection) -> list[tuple[str, str, int]]:
    """(kind, state, count) for every populated state, computed now."""
    query = select(machines.c.kind, machines.c.state, func.count()).group_by(
        machines.c.kind, machines.c.state)
    return [(k, s, int(n)) for k, s, n in conn.execute(query)]


def oldest_in_state(conn: Connection) -> list[tuple[str, str, datetime]]:
    """(kind, state, when the machine longest in it entered it), computed now."""
    query = select(machines.c.kind, machines.c.state, func.min(machines.c.state_entered_at)
                   ).group_by(machines.c.kind, machines.c.state)
    return [(k, s, _aware(t)) for k, s, t in conn.execute(query)]


def _aware(moment: Any) -> datetime:
    # min() of a UTCDateTime column comes back as the driver gives it
    # (SQLite: text; MariaDB: naive), not through the column's type.
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def refresh_state_counts(conn: Connection, now: datetime) -> int:
    """Recount machines per (kind, state) into ``machine_state_counts``, with
    when the machine longest in each state entered it; returns how many
    (kind, state) rows it holds now."""
    query = select(machines.c.kind, machines.c.state, func.count(),
                   func.min(machines.c.state_entered_at)
                   ).group_by(machines.c.kind, machines.c.state)
    counts = list(conn.execute(query))
    conn.execute(delete(machine_state_counts))
    if counts:
        conn.execute(insert(machine_state_counts), [
            {"kind": k, "state": s, "machines": int(n), "counted_at": now,
             "oldest_entered_at": _aware(t)} for k, s, n, t in counts])
    return len(counts)


def stored_oldest_in_state(conn: Connection) -> list[tuple[str, str, datetime]]:
    """The last recount's (kind, state, oldest entry) rows."""
    rows = conn.execute(select(machine_state_counts.c.kind, machine_state_counts.c.state,
                               machine_state_counts.c.oldest_entered_at)).all()
    return [(k, s, t) for k, s, t in rows if t is not None]


def stored_state_counts(conn: Connection) -> tuple[list[tuple[str, str, int]], datetime | None]:
    """The last recount: (kind, state, machines) rows and when it ran (None: never)."""
    rows = conn.execute(select(machine_state_counts.c.kind, machine_state_counts.c.state,
                               machine_state_counts.c.machines,
                               machine_state_counts.c.counted_at)).all()
    counted = min((r[3] for r in rows), default=None)
    return [(k, s, int(n)) for k, s, n, _ in rows], counted


def operation_queue(conn: Connection) -> tuple[int, datetime | None]:
    """How many operations wait or run, and when the oldest was written."""
    count, oldest = conn.execute(
        select(func.count(), func.min(operations.c.created_at))
        .where(operations.c.status.in_(("pending", "running")))).one()
    if isinstance(oldest, str):  # SQLite aggregates come back as text
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:  # and MariaDB's, naive
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), oldest


def ping(conn: Connection) -> None:
    conn.execute(select(1))


# ---------------------------------------------------------------- jobs


def insert_job(conn: Connection, record: Mapping[str, Any]) -> str:
    """Store a submitted job; returns its name (``job-<id>``)."""
    job_id = new_id(conn.execute(insert(jobs), {"name": "pending", **record}))
    name = f"job-{job_id}"
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(name=name))
    return name


def get_job(conn: Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(select(jobs).where(jobs.c.name == name)).first()
    return dict(row._mapping) if row else None


def queued_jobs(conn: Connection, *, kind: str, state: str, limit: int
                ) -> list[tuple[str, str | None]]:
    """(name, fabric) of the jobs whose machine is in ``state``, highest
    priority first, then oldest."""
    rows = conn.execute(
        select(jobs.c.name, jobs.c.fabric)
        .join(machines, (machines.c.kind == kind) & (machines.c.name == jobs.c.name))
        .where(machines.c.state == state)
        .order_by(jobs.c.priority.desc(), jobs.c.id).limit(limit))
    return [(name, fabric) for name, fabric in rows]


def finish_job(conn: Connection, name: str, *, comment: str | None, now: datetime) -> None:
    conn.execute(update(jobs).where(jobs.c.name == name)
                 .values(failure_comment=comment, finished_at=now))


def machine_vars(conn: Connection, machine_id: int) -> dict[str, Any]:
    value = conn.execute(select(machines.c.vars).where(machines.c.id == machine_id)).scalar()
    return dict(value or {})


# ---------------------------------------------------------------- boot resources


def start_bootres_import(conn: Connection, *, started_at: datetime, storage: str,
                         sources: Sequence[str]) -> int:
    return new_id(conn.execute(insert(bootres_imports), {
        "started_at": started_at, "status": "running", "storage": storage,
        "sources": list(sources)}))


def end_bootres_import(conn: Connection, import_id: int, *, status: str,
                       snapshot: str | None, error: str | None, now: datetime,
                       published: Sequence[Mapping[str, Any]]) -> None:
    conn.execute(update(bootres_imports).where(bootres_imports.c.id == import_id).values(
        status=status, snapshot=snapshot, error=error, finished_at=now))
    if published:
        conn.execute(insert(bootres_published),
                     [{"import_id": import_id, **row} for row in published])


def list_bootres_imports(conn: Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(select(bootres_imports).order_by(bootres_imports.c.id.desc())
                        .limit(limit))
    return [dict(r._mapping) for r in rows]


# ---------------------------------------------------------------- retention


def prune_history_batch(conn: Connection, cutoff: datetime, *, after_id: int, limit: int
                        ) -> tuple[int, int | None]:
    """Delete history rows older than ``cutoff`` among the ``limit`` rows after
    ``after_id`` (in id order), keeping every machine's newest row.

    Returns how many were deleted and the id to continue after, or None when
    the rows reached ``cutoff`` (ids grow with time: nothing older is left).
    """
    rows = conn.execute(select(history.c.id, history.c.machine_id, history.c.at)
                        .where(history.c.id > after_id).order_by(history.c.id)
                        .limit(limit)).all()
    old = [(id_, machine_id) for id_, machine_id, at in rows if at < cutoff]
    reached = len(old) < len(rows) or len(rows) < limit
    if old:
        newest = dict(conn.execute(
            select(history.c.machine_id, func.max(history.c.id))
            .where(history.c.machine_id.in_(sorted({m for _, m in old})))
            .group_by(history.c.machine_id)).all())
        doomed = [id_ for id_, machine_id in old if newest.get(machine_id) != id_]
    else:
        doomed = []
    deleted = 0
    if doomed:
        deleted = int(conn.execute(delete(history).where(history.c.id.in_(doomed))).rowcount)
    if reached:
        return deleted, None
    return deleted, rows[-1][0]


FINISHED_OPERATION_STATUSES = ("done", "failed", "stale")


def prune_operations_batch(conn: Connection, cutoff: datetime, *, after_id: int, limit: int
                           ) -> tuple[int, int | None]:
    """Delete operations that finished before ``cutoff`` among the ``limit``
    rows after ``after_id`` (in id order); pending and running ones stay.

    Returns how many were deleted and the id to continue after, or None once
    the rows reached operations written after ``cutoff``.
    """
    rows = conn.execute(select(operations.c.id, operations.c.status, operations.c.created_at,
                               operations.c.finished_at)
                        .where(operations.c.id > after_id).order_by(operations.c.id)
                        .limit(limit)).all()
    doomed = [id_ for id_, status, _, finished in rows
              if status in FINISHED_OPERATION_STATUSES and finished is not None
              and finished < cutoff]
    reached = len(rows) < limit or any(created >= cutoff for _, _, created, _ in rows)
    deleted = 0
    if doomed:
        deleted = int(conn.execute(delete(operations).where(operations.c.id.in_(doomed)))
                      .rowcount)
    if reached:
        return deleted, None
    return deleted, rows[-1][0]

