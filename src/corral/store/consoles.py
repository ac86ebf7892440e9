"""Console capture: each board's serial console output per boot attempt, kept
bounded per board and pruned with history, and which engine process captures
which board (a claim with an expiry, renewed while it captures).

Text is stored already redacted, in the pieces it arrived in; offsets count
characters from the start of the attempt, and stay valid when the oldest
pieces are dropped (the attempt's ``dropped`` says how many went).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from corral.store.repository import Repository
from corral.store.schema import console_attempts, console_chunks, console_claims, history, machines
from corral.store.values import MAX_CONSOLE_CHUNK as MAX_CHUNK_CHARS


class Consoles(Repository):
    """The ``console_attempts``, ``console_chunks`` and ``console_claims`` tables."""

    # -- claims
    def sync_claims(self, boards: Sequence[str]) -> None:
        """Keep one claim row per board that has a console, and none for
        the others (the caller holds a named lock, so two processes never
        insert the same row)."""
        have = {r[0] for r in self.conn.execute(select(console_claims.c.board))}
        wanted = set(boards)
        missing = sorted(wanted - have)
        if missing:
            self.conn.execute(insert(console_claims),
                              [{"board": b, "owner": None, "until": None} for b in missing])
        gone = sorted(have - wanted)
        if gone:
            self.conn.execute(delete(console_claims).where(console_claims.c.board.in_(gone)))

    def claim(self, *, owner: str, now: datetime, until: datetime, limit: int
              ) -> builtins.list[str]:
        """Renew ``owner``'s claims and take up to ``limit`` boards nobody
        holds (or whose holder's claim expired); the boards ``owner`` holds
        now, by name."""
        rows = self.conn.execute(
            select(console_claims.c.board, console_claims.c.owner)
            .where(or_(console_claims.c.owner == owner, console_claims.c.owner.is_(None),
                       console_claims.c.until < now))
            .order_by(console_claims.c.board)
            .with_for_update(skip_locked=True)).all()
        mine = [b for b, o in rows if o == owner]
        free = [b for b, o in rows if o != owner][:max(limit - len(mine), 0)]
        held = sorted(mine + free)
        if held:
            self.conn.execute(update(console_claims).where(console_claims.c.board.in_(held))
                              .values(owner=owner, until=until))
        return held

    def release(self, *, owner: str, boards: Sequence[str] | None = None) -> None:
        """Give ``owner``'s claims back (all of them, or those of ``boards``)."""
        query = update(console_claims).where(console_claims.c.owner == owner)
        if boards is not None:
            query = query.where(console_claims.c.board.in_(list(boards)))
        self.conn.execute(query.values(owner=None, until=None))

    def claims(self) -> dict[str, tuple[str | None, datetime | None]]:
        """``{board: (owner, until)}``."""
        return {b: (o, u) for b, o, u in self.conn.execute(select(console_claims))}

    # -- boots
    def boots_after(self, *, kind: str, board: str, states: Sequence[str], after_id: int
                    ) -> builtins.list[tuple[int, datetime]]:
        """(history id, at) of each time ``board`` entered one of ``states``
        after history row ``after_id``, oldest first."""
        query = (select(history.c.id, history.c.at)
                 .join(machines, machines.c.id == history.c.machine_id)
                 .where(machines.c.kind == kind, machines.c.name == board,
                        history.c.id > after_id, history.c.to_state.in_(list(states)))
                 .order_by(history.c.id))
        return [(int(i), at) for i, at in self.conn.execute(query)]

    # -- attempts
    def begin(self, *, board: str, history_id: int | None, now: datetime) -> dict[str, Any]:
        """Open the board's next attempt; returns its row."""
        number = int(self.conn.execute(
            select(func.coalesce(func.max(console_attempts.c.attempt), 0))
            .where(console_attempts.c.board == board)).scalar_one()) + 1
        self.conn.execute(insert(console_attempts).values(
            board=board, attempt=number, history_id=history_id, started_at=now,
            updated_at=now, chars=0, dropped=0, bytes=0))
        found = self.attempt(board, number)
        assert found is not None
        return found

    def attempts(self, board: str) -> builtins.list[dict[str, Any]]:
        """The board's attempts, oldest first."""
        rows = self.conn.execute(select(console_attempts)
                                 .where(console_attempts.c.board == board)
                                 .order_by(console_attempts.c.attempt))
        return [dict(r._mapping) for r in rows]

    def attempt(self, board: str, number: int | None = None) -> dict[str, Any] | None:
        """Attempt ``number`` of ``board`` (None: its newest)."""
        query = select(console_attempts).where(console_attempts.c.board == board)
        if number is None:
            query = query.order_by(console_attempts.c.attempt.desc()).limit(1)
        else:
            query = query.where(console_attempts.c.attempt == number)
        row = self.conn.execute(query).first()
        return dict(row._mapping) if row else None

    def append(self, attempt: dict[str, Any], text: str, now: datetime) -> dict[str, Any]:
        """Add ``text`` (at most :data:`MAX_CHUNK_CHARS`) to the end of
        ``attempt``; returns the attempt's row as it now is."""
        assert 0 < len(text) <= MAX_CHUNK_CHARS
        size = len(text.encode("utf-8"))
        row = self.conn.execute(select(console_attempts.c.chars)
                                .where(console_attempts.c.id == attempt["id"])).first()
        start = int(row[0]) if row else int(attempt["chars"])
        self.conn.execute(insert(console_chunks).values(
            attempt_id=attempt["id"], start=start, data=text, bytes=size, at=now))
        self.conn.execute(update(console_attempts)
                          .where(console_attempts.c.id == attempt["id"])
                          .values(chars=console_attempts.c.chars + len(text),
                                  bytes=console_attempts.c.bytes + size, updated_at=now))
        return {**attempt, "chars": start + len(text),
                "bytes": int(attempt["bytes"]) + size, "updated_at": now}

    def read(self, attempt_id: int, *, offset: int, limit: int) -> tuple[int, str]:
        """Up to ``limit`` characters of an attempt from ``offset``; returns
        (where the text begins, the text): later than ``offset`` when the
        characters there were dropped."""
        rows = self.conn.execute(
            select(console_chunks.c.start, console_chunks.c.data)
            .where(console_chunks.c.attempt_id == attempt_id,
                   console_chunks.c.start > offset - MAX_CHUNK_CHARS,
                   console_chunks.c.start < offset + limit)
            .order_by(console_chunks.c.start)).all()
        pieces = [(int(s), d) for s, d in rows if int(s) + len(d) > offset]
        if not pieces:
            return offset, ""
        begin = max(offset, pieces[0][0])
        text = "".join(d for _, d in pieces)[begin - pieces[0][0]:][:limit]
        return begin, text

    def bounded(self, board: str, max_bytes: int) -> int:
        """Drop the board's oldest console text until it keeps at most
        ``max_bytes``: whole attempts first (oldest first), then the oldest
        pieces of the newest one. Returns how many bytes went."""
        attempts = self.attempts(board)
        total = sum(int(a["bytes"]) for a in attempts)
        freed = 0
        for old in attempts[:-1]:
            if total - freed <= max_bytes:
                return freed
            self._drop_attempts([old["id"]])
            freed += int(old["bytes"])
        if not attempts or total - freed <= max_bytes:
            return freed
        newest = attempts[-1]
        excess = total - freed - max_bytes
        pieces = self.conn.execute(
            select(console_chunks.c.id, console_chunks.c.start, console_chunks.c.data,
                   console_chunks.c.bytes)
            .where(console_chunks.c.attempt_id == newest["id"])
            .order_by(console_chunks.c.start)).all()
        doomed, chars, size = [], 0, 0
        for id_, start, data, nbytes in pieces:
            if size >= excess:
                break
            doomed.append(id_)
            chars = int(start) + len(data)
            size += int(nbytes)
        if doomed:
            self.conn.execute(delete(console_chunks).where(console_chunks.c.id.in_(doomed)))
            self.conn.execute(update(console_attempts)
                              .where(console_attempts.c.id == newest["id"])
                              .values(dropped=chars, bytes=console_attempts.c.bytes - size))
        return freed + size

    def prune_batch(self, cutoff: datetime, *, limit: int) -> int:
        """Delete up to ``limit`` attempts last written before ``cutoff``,
        except each board's newest (its last boot stays explained)."""
        newest = (select(console_attempts.c.board,
                         func.max(console_attempts.c.attempt).label("attempt"))
                  .group_by(console_attempts.c.board).subquery())
        ids = [int(r[0]) for r in self.conn.execute(
            select(console_attempts.c.id)
            .join(newest, and_(newest.c.board == console_attempts.c.board,
                               newest.c.attempt == console_attempts.c.attempt), isouter=True)
            .where(console_attempts.c.updated_at < cutoff, newest.c.board.is_(None))
            .order_by(console_attempts.c.id).limit(limit))]
        self._drop_attempts(ids)
        return len(ids)

    def _drop_attempts(self, ids: Sequence[int]) -> None:
        if ids:
            self.conn.execute(delete(console_chunks)
                              .where(console_chunks.c.attempt_id.in_(list(ids))))
            self.conn.execute(delete(console_attempts)
                              .where(console_attempts.c.id.in_(list(ids))))
