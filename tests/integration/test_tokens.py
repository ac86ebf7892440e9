"""Tokens: only a digest is stored; verification, rotation, revocation, roles."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from corral.errors import CorralError, NotFound, UnknownMachine
from corral.store.schema import tokens as tokens_table
from corral.tokens import TokenStore


def test_only_a_digest_is_stored(engine):
    store = TokenStore(engine.db, cache_seconds=0)
    token = store.issue("ann", "operator")
    with engine.db.begin() as conn:
        rows = [tuple(r) for r in conn.execute(select(tokens_table))]
    secret = token.rsplit("_", 1)[-1]
    assert all(secret not in str(value) for row in rows for value in row)
    assert store.verify(token).name == "ann"


def test_wrong_malformed_rotated_and_revoked_tokens_fail(engine):
    engine.create("board", "b1")
    store = TokenStore(engine.db, cache_seconds=0)
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
