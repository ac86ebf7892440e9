"""Tokens: only a digest is stored; verification, rotation, revocation, roles."""

from __future__ import annotations

import time
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select

from corral.errors import CorralError, NotFound, UnknownMachine
from corral.store.schema import tokens as tokens_table
from corral.tokens import IDLE_SECONDS, TokenStore


def test_only_a_digest_is_stored(engine):
    store = TokenStore(engine.store, cache_seconds=0)
    token = store.issue("ann", "operator")
    with engine.store.sa.begin() as conn:
        rows = [tuple(r) for r in conn.execute(select(tokens_table))]
    # corral_<id>_<secret>; the secret may itself hold "_".
    secret = token.split("_", 2)[2]
    assert all(secret not in str(value) for row in rows for value in row)
    assert store.verify(token).name == "ann"


def test_wrong_malformed_rotated_and_revoked_tokens_fail(engine):
    engine.create("board", "b1")
    store = TokenStore(engine.store, cache_seconds=0)
    old = store.issue_for_board("b1")
    principal = store.verify(old)
    assert (principal.role, principal.board) == ("board", "b1")
    token_id = old.split("_")[1]
    for bad in ("", "corral", "corral_x_y", f"corral_{token_id}_wrong", "bearer " + old):
        assert store.verify(bad) is None, bad
    new = store.issue_for_board("b1")
    assert store.verify(old) is None
    assert store.verify(new) is not None
    store.revoke("board:b1")
    assert store.verify(new) is None
    with pytest.raises(NotFound):
        store.revoke("board:b1")
    with pytest.raises(UnknownMachine):
        store.issue_for_board("ghost")
    with pytest.raises(CorralError, match="role must be one of"):
        store.issue("x", "root")
    with pytest.raises(CorralError, match="may not start with 'board:'"):
        store.issue("board:b1", "admin")


class Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _count_statements(db):
    seen: list[str] = []
    event.listen(db, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_revalidation_rereads_the_whole_cache_with_one_query(engine):
    for name in ("b1", "b2", "b3"):
        engine.create("board", name)
    other = TokenStore(engine.store, cache_seconds=0)  # another API process
    kept, revoked, rotated = (other.issue_for_board(n) for n in ("b1", "b2", "b3"))
    ticks = Ticks()
    store = TokenStore(engine.store, cache_seconds=2, timer=ticks)
    for token in (kept, revoked, rotated):
        assert store.verify(token) is not None
    other.revoke("board:b2")
    rotated_new = other.issue_for_board("b3")
    # Within the cache time, the cache still answers for all three.
    ticks.now += 1
    assert all(store.cached(t) for t in (kept, revoked, rotated))

    statements = _count_statements(engine.store.sa)
    assert store.revalidate() == 1
    assert len([s for s in statements if "tokens" in s]) == 1
    # Past the first verification's 2 s, the kept token is still cached
    # (valid until the revalidation's start + 2 s); the others are gone.
    ticks.now += 1.5
    assert store.cached(kept).board == "b1"
    assert store.cached(revoked) is None
    assert store.cached(rotated) is None
    assert store.verify(revoked) is None
    assert store.verify(rotated) is None
    assert store.verify(rotated_new).board == "b3"
    # Without revalidation, entries run out and the database is asked again.
    ticks.now += 2
    assert store.cached(kept) is None
    assert store.verify(kept).board == "b1"


def test_revalidation_forgets_tokens_nobody_presents(engine):
    engine.create("board", "b1")
    token = TokenStore(engine.store, cache_seconds=0).issue_for_board("b1")
    ticks = Ticks()
    store = TokenStore(engine.store, cache_seconds=2, timer=ticks)
    store.verify(token)
    ticks.now += IDLE_SECONDS + 1
    statements = _count_statements(engine.store.sa)
    assert store.revalidate() == 0
    assert statements == []


def test_revalidation_thread_keeps_tokens_in_use_cached(engine):
    engine.create("board", "b1")
    other = TokenStore(engine.store, cache_seconds=0)
    token = other.issue_for_board("b1")
    store = TokenStore(engine.store, cache_seconds=0.2)
    store.verify(token)
    store.start_revalidating()
    try:
        statements = _count_statements(engine.store.sa)
        # Over ten cache lifetimes the token stays cached: no verification of
        # its own, only the background re-reads of the whole cache.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert store.cached(token) is not None
            time.sleep(0.01)
        reads = [s for s in statements if "FROM tokens" in s]
        assert len(reads) >= 5
        assert all("tokens.id IN" in s for s in reads), reads
        other.revoke("board:b1")
        deadline = time.monotonic() + 5
        while store.cached(token) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.cached(token) is None
    finally:
        store.close()


def test_a_token_revoked_while_it_is_being_verified_is_not_cached(engine):
    """A verification that read the row just before the server revoked the
    token (a board's reimage token, say) must not cache it afterwards: the
    revoked token would then pass for cache_seconds more."""
    engine.create("board", "b1")
    tokens = TokenStore(engine.store, cache_seconds=600)
    token = tokens.issue_for_board("b1")
    real = engine.store

    class RevokedAfterTheRead:
        armed = True

        @contextmanager
        def unit(self):
            with real.unit() as tx:
                yield tx
            if self.armed:
                self.armed = False
                tokens.revoke("board:b1")

    tokens.store = RevokedAfterTheRead()  # type: ignore[assignment]
    # Valid when it was read: this one verification passes...
    assert tokens.verify(token) is not None
    # ...but the revocation that followed holds from now on.
    assert tokens.cached(token) is None
    assert tokens.verify(token) is None
