"""Bearer tokens for boards and operators.

A token reads ``corral_<id>_<secret>``. Only a SHA-256 digest of the secret is
stored; a presented token is looked up by its id and its digest compared with
``hmac.compare_digest``, in constant time. Issuing a token under an existing
name gives it a new secret: the old one stops working (rotation). Board tokens
(``corral board token NAME``) may only fire events at their own board; operator
tokens carry a role, ``viewer`` < ``operator`` < ``admin``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine as Database
from sqlalchemy.exc import IntegrityError

from corral.engine.core import Clock, utcnow
from corral.errors import Conflict, CorralError, NotFound, UnknownMachine
from corral.store import queries as q

ROLES = ("viewer", "operator", "admin")
BOARD_ROLE = "board"
RANK = {BOARD_ROLE: 0, "viewer": 1, "operator": 2, "admin": 3}
PREFIX = "corral"


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who a verified token belongs to."""

    token_id: int
    name: str
    role: str
    board: str | None

    def at_least(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Issue, rotate, revoke and verify tokens.

    ``cache_seconds`` keeps a verified token in memory that long, sparing a
    query per request; a revoked or rotated token stops working within it.
    """

    def __init__(self, db: Database, *, clock: Clock = utcnow,
                 cache_seconds: float = 2.0) -> None:
        self.db = db
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    def issue(self, name: str, role: str) -> str:
        """Create or rotate the operator token ``name``; returns the token (shown once).

        Raises:
            CorralError: unknown role or a name reserved for board tokens.
        """
        if role not in ROLES:
            raise CorralError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not name or name.startswith("board:") or len(name) > 200:
            raise CorralError("a token name is 1-200 characters and may not start with "
                              "'board:'")
        return self._save(name, role, None)

    def issue_for_board(self, board: str) -> str:
        """Create or rotate the token board ``board`` uses for callbacks.

        Raises:
            UnknownMachine: no such board.
        """
        with self.db.begin() as conn:
            row = q.get_machine(conn, "board", board)
        if row is None:
            raise UnknownMachine("board", board)
        return self._save(f"board:{board}", BOARD_ROLE, row.id)

    def _save(self, name: str, role: str, machine_id: int | None) -> str:
        secret = secrets.token_urlsafe(32)
        try:
            with self.db.begin() as conn:
                token_id = q.save_token(conn, name=name, role=role, machine_id=machine_id,
                                        secret_hash=_digest(secret), now=self.clock())
        except IntegrityError:
            raise Conflict(f"token {name!r} was created concurrently; try again") from None
        self._cache.clear()
        return f"{PREFIX}_{token_id}_{secret}"

    def revoke(self, name: str) -> None:
        """Raises: NotFound when there is no live token of that name."""
        with self.db.begin() as conn:
            if not q.revoke_token(conn, name, self.clock()):
                raise NotFound(f"no live token named {name!r}")
        self._cache.clear()

    def list(self) -> list[q.TokenRow]:
        with self.db.begin() as conn:
            return q.list_tokens(conn)

    def cached(self, presented: str) -> Principal | None:
        """The owner of a recently verified token, without touching the database."""
        cached = self._cache.get(hashlib.sha256(presented.encode()).hexdigest())
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    def verify(self, presented: str) -> Principal | None:
        """The token's owner, or ``None`` for a malformed, unknown, wrong or revoked token."""
        key = hashlib.sha256(presented.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        prefix, _, rest = presented.partition("_")
        token_id, _, secret = rest.partition("_")
        if prefix != PREFIX or not token_id.isdigit() or not secret:
            return None
        with self.db.begin() as conn:
            row = q.get_token(conn, int(token_id))
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_hash, _digest(secret)):
            return None
        principal = Principal(token_id=row.id, name=row.name, role=row.role, board=row.board)
        if self.cache_seconds > 0:
            self._cache[key] = (time.monotonic() + self.cache_seconds, principal)
        return principal
