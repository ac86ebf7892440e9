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
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from corral.engine.core import Clock, utcnow
from corral.errors import Conflict, CorralError, DuplicateKey, NotFound, UnknownMachine
from corral.names import TOKEN_ROLES, Role
from corral.store.port import Store
from corral.store.values import TokenRow

ROLES: tuple[str, ...] = tuple(role.value for role in TOKEN_ROLES)
BOARD_ROLE = Role.BOARD.value
# A reimage token: minted when a board's PXE configuration is written, carried
# on its kernel command line, good for that board's second-stage events only
# while it is on the reimage path (see docs/lab.md, "The reimage token").
REIMAGE_ROLE = Role.REIMAGE.value
# A lease's token: issued with the lease, good for that lease's routes only.
HOLDER_ROLE = Role.HOLDER.value
RANK = {BOARD_ROLE: 0, REIMAGE_ROLE: 0, HOLDER_ROLE: 0, Role.VIEWER.value: 1,
        Role.USER.value: 2, Role.OPERATOR.value: 3, Role.ADMIN.value: 4}
RESERVED_PREFIXES = ("board:", "reimage:", "lease:")
PREFIX = "corral"
_TOKEN_ID = re.compile(r"[0-9]{1,19}")
MAX_TOKEN_ID = 2**63 - 1
# A cached token nobody has presented for this long is forgotten at the next
# revalidation rather than re-read for ever.
IDLE_SECONDS = 600.0

log = structlog.get_logger("corral.tokens")


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


@dataclass(slots=True)
class _Cached:
    principal: Principal
    secret_hash: str
    valid_until: float  # time.monotonic()
    used: float


class TokenStore:
    """Issue, rotate, revoke and verify tokens.

    ``cache_seconds`` keeps a verified token in memory that long, sparing a
    query per request; a revoked or rotated token stops working within it.
    :meth:`start_revalidating` (the API processes run it) re-reads every
    cached token with one query each ``cache_seconds / 2`` and extends those
    still valid, so that tokens in use are never re-verified one by one.
    """

    def __init__(self, store: Store, *, clock: Clock = utcnow,
                 cache_seconds: float = 2.0,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.timer = timer
        self._cache: dict[str, _Cached] = {}
        # Counts the times the cache was emptied (a token revoked or issued
        # here): a verification whose query began before one caches nothing,
        # since what it read may already be revoked.
        self._generation = 0
        self._stop = threading.Event()
        self._revalidator: threading.Thread | None = None

    def issue(self, name: str, role: str) -> str:
        """Create or rotate the operator token ``name``; returns the token (shown once).

        Raises:
            CorralError: unknown role or a name reserved for board tokens.
        """
        if role not in ROLES:
            raise CorralError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not name or name.startswith(RESERVED_PREFIXES) or len(name) > 200:
            raise CorralError("a token name is 1-200 characters and may not start with "
                              "'board:', 'reimage:' or 'lease:'")
        return self._save(name, role, None)

    def issue_for_board(self, board: str) -> str:
        """Create or rotate the token board ``board`` uses for callbacks.

        Raises:
            UnknownMachine: no such board.
        """
        return self._save_for_board(board, "board", BOARD_ROLE)

    def issue_for_reimage(self, board: str) -> str:
        """Mint (or rotate: the previous one stops working) the reimage token
        of board ``board``.

        Raises:
            UnknownMachine: no such board.
        """
        return self._save_for_board(board, "reimage", REIMAGE_ROLE)

    def _save_for_board(self, board: str, prefix: str, role: str) -> str:
        with self.store.unit() as tx:
            row = tx.machines.get("board", board)
        if row is None:
            raise UnknownMachine("board", board)
        return self._save(f"{prefix}:{board}", role, row.id)

    def revoke_reimage(self, board: str) -> bool:
        """Revoke board ``board``'s reimage token; False if it had none."""
        with self.store.unit() as tx:
            revoked = tx.tokens.revoke(f"reimage:{board}", self.clock())
        self._forget_all()
        return revoked

    def _save(self, name: str, role: str, machine_id: int | None) -> str:
        try:
            with self.store.unit() as tx:
                token = mint(tx, name=name, role=role, machine_id=machine_id, now=self.clock())
        except DuplicateKey:
            raise Conflict(f"token {name!r} was created concurrently; try again") from None
        self._forget_all()
        return token

    def revoke(self, name: str) -> None:
        """Raises: NotFound when there is no live token of that name."""
        with self.store.unit() as tx:
            if not tx.tokens.revoke(name, self.clock()):
                raise NotFound(f"no live token named {name!r}")
        self._forget_all()

    def _forget_all(self) -> None:
        self._generation += 1
        self._cache.clear()

    def list(self) -> list[TokenRow]:
        with self.store.unit() as tx:
            return tx.tokens.list()

    def cached(self, presented: str) -> Principal | None:
        """The owner of a recently verified token, without touching the database."""
        entry = self._cache.get(_digest(presented))
        if entry is not None:
            now = self.timer()
            if entry.valid_until > now:
                entry.used = now
                return entry.principal
        return None

    def verify(self, presented: str) -> Principal | None:
        """The token's owner, or ``None`` for a malformed, unknown, wrong or revoked token."""
        found = self.cached(presented)
        if found is not None:
            return found
        prefix, _, rest = presented.partition("_")
        token_id, _, secret = rest.partition("_")
        # ASCII digits only ('²'.isdigit() is true, and int() refuses it), and
        # an id that fits the column.
        if prefix != PREFIX or not _TOKEN_ID.fullmatch(token_id) or not secret \
                or int(token_id) > MAX_TOKEN_ID:
            return None
        started = self.timer()
        generation = self._generation
        with self.store.unit() as tx:
            row = tx.tokens.get(int(token_id))
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_hash, _digest(secret)):
            return None
        principal = _principal(row)
        if self.cache_seconds > 0 and generation == self._generation:
            self._cache[_digest(presented)] = _Cached(
                principal, row.secret_hash, started + self.cache_seconds, started)
        return principal

    def revalidate(self) -> int:
        """Re-read every cached token in one query: extend the ones still valid,
        drop the revoked, rotated and long unused. Returns how many remain."""
        started = self.timer()
        entries = {key: entry for key, entry in list(self._cache.items())
                   if started - entry.used < IDLE_SECONDS}
        for key in self._cache.keys() - entries.keys():
            self._cache.pop(key, None)
        if not entries:
            return 0
        with self.store.unit() as tx:
            rows = {row.id: row for row in tx.tokens.get_many(
                entry.principal.token_id for entry in entries.values())}
        for key, entry in entries.items():
            row = rows.get(entry.principal.token_id)
            if (row is None or row.revoked_at is not None
                    or not hmac.compare_digest(row.secret_hash, entry.secret_hash)):
                if self._cache.get(key) is entry:
                    del self._cache[key]
                continue
            # Valid as of the moment this query started: the same bound a
            # single verification gives.
            entry.principal = _principal(row)
            entry.valid_until = max(entry.valid_until, started + self.cache_seconds)
        return len(self._cache)

    def start_revalidating(self) -> None:
        """Revalidate the cache every ``cache_seconds / 2`` in a background thread
        (until :meth:`close`). Does nothing when caching is off."""
        if self.cache_seconds <= 0 or self._revalidator is not None:
            return
        self._stop.clear()
        self._revalidator = threading.Thread(target=self._revalidate_loop,
                                             name="corral-token-cache", daemon=True)
        self._revalidator.start()

    def close(self) -> None:
        self._stop.set()
        if self._revalidator is not None:
            self._revalidator.join()
            self._revalidator = None

    def _revalidate_loop(self) -> None:
        while not self._stop.wait(self.cache_seconds / 2):
            try:
                self.revalidate()
            except Exception as exc:
                # The entries then run out, and requests verify their tokens
                # one by one (and get 503 while the database is away).
                log.warning("token_revalidation_failed", error=f"{type(exc).__name__}: {exc}")


def mint(tx: Any, *, name: str, role: str, machine_id: int | None, now: datetime) -> str:
    """Create or rotate token ``name`` inside the store transaction ``tx``;
    returns the token (shown once). A lease's token is minted in the
    transaction that stores the lease."""
    secret = secrets.token_urlsafe(32)
    token_id = tx.tokens.save(name=name, role=role, machine_id=machine_id,
                              secret_hash=_digest(secret), now=now)
    return f"{PREFIX}_{token_id}_{secret}"


def _principal(row: TokenRow) -> Principal:
    return Principal(token_id=row.id, name=row.name, role=row.role, board=row.board)
