"""API tokens: a name, a role, a secret's hash, and for a board's own token
the board it speaks for; rotated by saving a new secret, revoked by time."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert, select, update

from corral.store.repository import Repository, new_id
from corral.store.schema import machines, tokens
from corral.store.values import TokenRow

_COLUMNS = (tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.machine_id,
            machines.c.name.label("board"), tokens.c.secret_hash, tokens.c.created_at,
            tokens.c.revoked_at)
_with_board = select(*_COLUMNS).select_from(
    tokens.outerjoin(machines, machines.c.id == tokens.c.machine_id))


class Tokens(Repository):
    """The ``tokens`` table."""

    def get(self, token_id: int) -> TokenRow | None:
        row = self.conn.execute(_with_board.where(tokens.c.id == token_id)).first()
        return TokenRow(**row._mapping) if row else None

    def get_many(self, token_ids: Iterable[int]) -> list[TokenRow]:
        """The tokens of these ids that exist (revoked ones included)."""
        rows = self.conn.execute(_with_board.where(tokens.c.id.in_(sorted(set(token_ids)))))
        return [TokenRow(**r._mapping) for r in rows]

    def list(self) -> list[TokenRow]:
        rows = self.conn.execute(_with_board.order_by(tokens.c.name))
        return [TokenRow(**r._mapping) for r in rows]

    def save(self, *, name: str, role: str, machine_id: int | None, secret_hash: str,
             now: datetime) -> int:
        """Create the token ``name`` or give it a new secret (rotation);
        returns its id."""
        existing = self.conn.execute(select(tokens.c.id).where(tokens.c.name == name)
                                     .with_for_update()).scalar()
        values = {"role": role, "machine_id": machine_id, "secret_hash": secret_hash,
                  "created_at": now, "revoked_at": None}
        if existing is not None:
            self.conn.execute(update(tokens).where(tokens.c.id == existing).values(**values))
            return int(existing)
        return new_id(self.conn.execute(insert(tokens), {"name": name, **values}))

    def revoke(self, name: str, now: datetime) -> bool:
        result = self.conn.execute(update(tokens).where(tokens.c.name == name,
                                                        tokens.c.revoked_at.is_(None))
                                   .values(revoked_at=now))
        return bool(result.rowcount)
