"""Leases: the request beside each lease machine, who held which board when,
and each board's lease epoch and holder (docs/leases.md)."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update

from corral.store.machines import MACHINE_COLUMNS
from corral.store.repository import Repository, aware, new_id
from corral.store.schema import board_holds, lease_boards, leases, machines
from corral.store.values import MachineRow


class Leases(Repository):
    """The ``leases``, ``lease_boards`` and ``board_holds`` tables."""

    # -- requests
    def insert(self, record: Mapping[str, Any]) -> str:
        """Store a request; returns its name (``lease-<id>``)."""
        placeholder = f"pending-{uuid.uuid4().hex}"
        lease_id = new_id(self.conn.execute(insert(leases), {**record, "name": placeholder}))
        name = f"lease-{lease_id}"
        self.conn.execute(update(leases).where(leases.c.id == lease_id).values(name=name))
        return name

    def get(self, name: str) -> dict[str, Any] | None:
        """The request and its machine's state, epoch and deadline."""
        row = self.conn.execute(_with_state().where(leases.c.name == name)).first()
        return dict(row._mapping) if row else None

    def list(self, *, kind: str, states: Sequence[str] | None = None,
             owner: str | None = None, limit: int = 500,
             by_end: bool = False) -> list[dict[str, Any]]:
        """Leases newest first (with their machine's state); ``by_end``: the
        ones that ended last first (a lease that ended by its wait timeout
        has no ``ended_at``: it ended when it entered its state)."""
        query = _with_state(kind)
        if states is not None:
            query = query.where(machines.c.state.in_(list(states)))
        if owner is not None:
            query = query.where(leases.c.owner == owner)
        if by_end:
            query = query.order_by(
                func.coalesce(leases.c.ended_at, machines.c.state_entered_at).desc())
        query = query.order_by(leases.c.id.desc()).limit(limit)
        return [dict(r._mapping) for r in self.conn.execute(query)]

    def update(self, name: str, **values: Any) -> None:
        self.conn.execute(update(leases).where(leases.c.name == name).values(**values))

    def queue(self, *, kind: str, states: Sequence[str],
              asks: Sequence[tuple[str | None, str | None]]) -> builtins.list[dict[str, Any]]:
        """The leases in ``states`` asking for one of ``asks``, with only what
        ranking and allocating them needs (the queue can be long)."""
        columns = (leases.c.id, leases.c.name, leases.c.owner, leases.c.share,
                   leases.c.priority, leases.c.board, leases.c.selector, leases.c.count,
                   leases.c.release, leases.c.duration_s, leases.c.heartbeat_s,
                   leases.c.requested_at, leases.c.wait_until, machines.c.state,
                   machines.c.state_entered_at)
        query = (select(*columns)
                 .join(machines, and_(machines.c.kind == kind,
                                      machines.c.name == leases.c.name))
                 .where(machines.c.state.in_(list(states)), _asking(asks)))
        keys = [c.name for c in columns]
        return [dict(zip(keys, row, strict=True)) for row in self.conn.execute(query).all()]

    def asks(self, *, kind: str, states: Sequence[str]
             ) -> builtins.list[tuple[str | None, str | None]]:
        """The distinct (board, selector) pairs the leases in ``states`` ask for."""
        query = (select(leases.c.board, leases.c.selector).distinct()
                 .join(machines, and_(machines.c.kind == kind,
                                      machines.c.name == leases.c.name))
                 .where(machines.c.state.in_(list(states))))
        return [(b, s) for b, s in self.conn.execute(query)]

    def count_queued(self, *, kind: str, owner: str, states: Sequence[str]) -> int:
        return int(self.conn.execute(
            select(func.count()).select_from(leases)
            .join(machines, (machines.c.kind == kind) & (machines.c.name == leases.c.name))
            .where(leases.c.owner == owner, machines.c.state.in_(list(states)))).scalar() or 0)

    # -- holds
    def holds(self, boards: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
        """``{board: (lease id, epoch)}`` of held boards (of ``boards``)."""
        query = select(board_holds.c.board, board_holds.c.lease_id, board_holds.c.epoch) \
            .where(board_holds.c.lease_id.is_not(None))
        if boards is not None:
            query = query.where(board_holds.c.board.in_(list(boards)))
        return {b: (lease_id, epoch) for b, lease_id, epoch in self.conn.execute(query)}

    def holds_of(self, lease_ids: Sequence[int]) -> dict[str, tuple[int, int]]:
        """``{board: (lease id, epoch)}`` of the boards ``lease_ids`` hold."""
        if not lease_ids:
            return {}
        query = select(board_holds.c.board, board_holds.c.lease_id, board_holds.c.epoch) \
            .where(board_holds.c.lease_id.in_(list(lease_ids)))
        return {b: (lease_id, epoch) for b, lease_id, epoch in self.conn.execute(query)}

    def unsettled(self, *, kind: str, board_kind: str, holding: str, held: str
                  ) -> builtins.list[int]:
        """Ids of the leases holding a board that is not in state ``held``,
        or holding boards while not in state ``holding`` (preparing,
        returning, or ended by hand): what a scheduling pass must look at
        among the holders. The rest (an active lease whose boards are all
        held) needs nothing."""
        board = machines.alias("board")
        lease = machines.alias("lease")
        query = (select(board_holds.c.lease_id).distinct()
                 .join(board, and_(board.c.kind == board_kind,
                                   board.c.name == board_holds.c.board))
                 .join(leases, leases.c.id == board_holds.c.lease_id)
                 .join(lease, and_(lease.c.kind == kind, lease.c.name == leases.c.name))
                 .where(or_(board.c.state != held, lease.c.state != holding)))
        return [int(r[0]) for r in self.conn.execute(query)]

    def by_ids(self, ids: Sequence[int], *, kind: str) -> builtins.list[dict[str, Any]]:
        """The leases ``ids`` (with their machine's state)."""
        if not ids:
            return []
        return [dict(r._mapping) for r in self.conn.execute(
            _with_state(kind).where(leases.c.id.in_(list(ids))))]

    def warning_due(self, *, kind: str, state: str, due: datetime
                    ) -> builtins.list[dict[str, Any]]:
        """Leases in ``state`` not yet warned whose expiry is before ``due``."""
        return [dict(r._mapping) for r in self.conn.execute(
            _with_state(kind).where(machines.c.state == state, leases.c.warned_at.is_(None),
                                    leases.c.expires_at <= due))]

    def free_boards(self, *, board_kind: str, state: str) -> builtins.list[MachineRow]:
        """Boards in ``state`` that nobody holds."""
        held = select(board_holds.c.board).where(board_holds.c.lease_id.is_not(None))
        query = (select(*MACHINE_COLUMNS)
                 .where(machines.c.kind == board_kind, machines.c.state == state,
                        machines.c.name.not_in(held))
                 .order_by(machines.c.name))
        return [MachineRow.from_row(r) for r in self.conn.execute(query)]

    def epoch(self, board: str) -> tuple[int | None, int]:
        """(holding lease id or None, current epoch) of ``board``."""
        row = self.conn.execute(select(board_holds.c.lease_id, board_holds.c.epoch)
                                .where(board_holds.c.board == board)).first()
        return (row[0], row[1]) if row else (None, 0)

    def hold(self, board: str, lease_id: int, now: datetime) -> int:
        """Make ``lease_id`` the holder of the (locked) ``board``; returns the
        board's new lease epoch."""
        holder, epoch = self.epoch(board)
        assert holder is None, f"board {board} is already held by lease id {holder}"
        epoch += 1
        values = {"epoch": epoch, "lease_id": lease_id, "since": now}
        done = self.conn.execute(update(board_holds).where(board_holds.c.board == board)
                                 .values(**values)).rowcount
        if not done:
            self.conn.execute(insert(board_holds), {"board": board, **values})
        self.conn.execute(insert(lease_boards), {"lease_id": lease_id, "board": board,
                                                 "epoch": epoch, "held_at": now})
        return epoch

    def unhold(self, board: str, lease_id: int, now: datetime) -> None:
        """``lease_id`` lets go of ``board`` (its epoch stays, so the lease's
        token never matches it again)."""
        self.conn.execute(update(board_holds).where(board_holds.c.board == board,
                                                    board_holds.c.lease_id == lease_id)
                          .values(lease_id=None, since=None))
        self.conn.execute(update(lease_boards).where(lease_boards.c.lease_id == lease_id,
                                                     lease_boards.c.board == board,
                                                     lease_boards.c.released_at.is_(None))
                          .values(released_at=now))

    def boards_of(self, lease_ids: Sequence[int]) -> dict[int, builtins.list[dict[str, Any]]]:
        """Per lease, the boards it held or holds, in the order it got them."""
        found: dict[int, list[dict[str, Any]]] = {i: [] for i in lease_ids}
        if not lease_ids:
            return found
        rows = self.conn.execute(select(lease_boards).where(
            lease_boards.c.lease_id.in_(list(lease_ids)))
            .order_by(lease_boards.c.lease_id, lease_boards.c.held_at, lease_boards.c.board))
        for r in rows:
            found[r.lease_id].append(dict(r._mapping))
        return found

    def holders(self, board: str, *, at: datetime | None = None, limit: int = 100
                ) -> builtins.list[dict[str, Any]]:
        """Who held ``board`` (at ``at``), newest first."""
        query = (select(leases.c.name, leases.c.owner, leases.c.purpose, lease_boards.c.epoch,
                        lease_boards.c.held_at, lease_boards.c.released_at)
                 .join(leases, leases.c.id == lease_boards.c.lease_id)
                 .where(lease_boards.c.board == board))
        if at is not None:
            query = query.where(lease_boards.c.held_at <= at, or_(
                lease_boards.c.released_at.is_(None), lease_boards.c.released_at > at))
        query = query.order_by(lease_boards.c.held_at.desc()).limit(limit)
        return [dict(r._mapping) for r in self.conn.execute(query)]

    def usage(self, since: datetime, now: datetime) -> dict[str, float]:
        """Board-seconds each share held since ``since`` (holds still open count
        up to ``now``)."""
        rows = self.conn.execute(
            select(leases.c.share, lease_boards.c.held_at, lease_boards.c.released_at)
            .join(leases, leases.c.id == lease_boards.c.lease_id)
            .where(or_(lease_boards.c.released_at.is_(None),
                       lease_boards.c.released_at > since)))
        used: dict[str, float] = {}
        for share, held_at, released_at in rows:
            start = max(aware(held_at), since)
            end = aware(released_at) if released_at is not None else now
            used[share] = used.get(share, 0.0) + max((end - start).total_seconds(), 0.0)
        return used

    def held_boards(self, *, kind: str, states: Sequence[str]) -> dict[str, int]:
        """Boards held right now per owner, by leases in ``states``."""
        rows = self.conn.execute(
            select(leases.c.owner, func.count())
            .select_from(board_holds)
            .join(leases, leases.c.id == board_holds.c.lease_id)
            .join(machines, and_(machines.c.kind == kind, machines.c.name == leases.c.name))
            .where(machines.c.state.in_(list(states)))
            .group_by(leases.c.owner))
        return {owner: int(n) for owner, n in rows}


def _asking(asks: Sequence[tuple[str | None, str | None]]) -> Any:
    """Leases asking for one of these (board, selector) pairs."""
    boards = sorted({b for b, _ in asks if b is not None})
    chosen = sorted({s for b, s in asks if b is None and s is not None})
    terms = [leases.c.board.in_(boards),
             and_(leases.c.board.is_(None), leases.c.selector.in_(chosen))]
    if (None, None) in asks:
        terms.append(and_(leases.c.board.is_(None), leases.c.selector.is_(None)))
    return or_(*terms)


def _with_state(kind: str = "lease") -> Any:
    return (select(leases, machines.c.state, machines.c.epoch.label("machine_epoch"),
                   machines.c.deadline, machines.c.state_entered_at, machines.c.id
                   .label("machine_id"))
            .join(machines, and_(machines.c.kind == kind, machines.c.name == leases.c.name)))
