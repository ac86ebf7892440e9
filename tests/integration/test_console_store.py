"""The console store on every backend: attempts numbered per board, text read
back by offset, the per-board bound, pruning with history, exclusive claims."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _write(store, board, *texts, history_id=None, at=NOW):
    with store.unit() as tx:
        attempt = tx.consoles.begin(board=board, history_id=history_id, now=at)
        for text in texts:
            attempt = tx.consoles.append(attempt, text, at)
    return attempt


def test_attempts_are_numbered_per_board_and_read_back_by_offset(store):
    _write(store, "b1", "BIOS\n", "Linux version 6.1\n", history_id=7)
    _write(store, "b1", "second boot\n")
    _write(store, "b2", "other board\n")
    with store.unit() as tx:
        attempts = tx.consoles.attempts("b1")
        assert [a["attempt"] for a in attempts] == [1, 2]
        assert attempts[0]["history_id"] == 7
        assert attempts[0]["chars"] == len("BIOS\nLinux version 6.1\n")
        first = attempts[0]["id"]
        assert tx.consoles.read(first, offset=0, limit=1000) == (0, "BIOS\nLinux version 6.1\n")
        assert tx.consoles.read(first, offset=7, limit=5) == (7, "nux v")
        assert tx.consoles.read(first, offset=100, limit=10) == (100, "")
        assert tx.consoles.attempt("b1")["attempt"] == 2
        assert tx.consoles.attempt("b2", 1)["chars"] == len("other board\n")


def test_text_with_any_character_round_trips(store):
    text = "é ✓ \x1b[0m 'quote' \"dq\" \\ back\n\u4e2d\n"
    attempt = _write(store, "b1", text)
    with store.unit() as tx:
        assert tx.consoles.read(attempt["id"], offset=0, limit=100) == (0, text)
        assert tx.consoles.attempt("b1")["bytes"] == len(text.encode())


def test_the_bound_drops_oldest_attempts_then_oldest_pieces(store):
    _write(store, "b1", "a" * 100)
    _write(store, "b1", "b" * 100)
    _write(store, "b1", "c" * 50, "d" * 50)
    with store.unit() as tx:
        assert tx.consoles.bounded("b1", 250) == 100
        assert [a["attempt"] for a in tx.consoles.attempts("b1")] == [2, 3]
        assert tx.consoles.bounded("b1", 60) == 150
        (left,) = tx.consoles.attempts("b1")
        assert left["attempt"] == 3
        assert left["dropped"] == 50
        assert left["bytes"] == 50
        # Offsets stay where they were: the text now begins at 50.
        assert tx.consoles.read(left["id"], offset=0, limit=1000) == (50, "d" * 50)


def test_prune_keeps_each_boards_newest_attempt(store):
    _write(store, "b1", "old\n", at=NOW - timedelta(days=10))
    _write(store, "b1", "older but newest\n", at=NOW - timedelta(days=9))
    _write(store, "b2", "recent\n", at=NOW - timedelta(days=1))
    _write(store, "b2", "now\n", at=NOW)
    with store.unit() as tx:
        assert tx.consoles.prune_batch(NOW - timedelta(days=5), limit=100) == 1
        assert [a["attempt"] for a in tx.consoles.attempts("b1")] == [2]
        assert [a["attempt"] for a in tx.consoles.attempts("b2")] == [1, 2]


def test_a_board_is_claimed_by_one_owner_until_its_claim_expires(store):
    with store.unit() as tx:
        tx.consoles.sync_claims(["b1", "b2", "b3"])
    until = NOW + timedelta(seconds=30)
    with store.unit() as tx:
        assert tx.consoles.claim(owner="p1", now=NOW, until=until, limit=2) == ["b1", "b2"]
    with store.unit() as tx:
        assert tx.consoles.claim(owner="p2", now=NOW, until=until, limit=10) == ["b3"]
    with store.unit() as tx:
        # Renewing keeps what one holds.
        assert tx.consoles.claim(owner="p1", now=NOW, until=until, limit=2) == ["b1", "b2"]
    later = NOW + timedelta(seconds=31)
    with store.unit() as tx:
        # p1 stopped renewing; its boards go to whoever asks.
        assert tx.consoles.claim(owner="p2", now=later, until=later + timedelta(seconds=30),
                                 limit=10) == ["b1", "b2", "b3"]
    with store.unit() as tx:
        tx.consoles.release(owner="p2", boards=["b1"])
        tx.consoles.sync_claims(["b1", "b2"])
        assert tx.consoles.claims() == {"b1": (None, None),
                                        "b2": ("p2", later + timedelta(seconds=30))}


def test_prune_removes_console_attempts_with_history_retention(engine, clock):
    old = engine.clock()
    with engine.store.unit() as tx:
        for _ in range(3):
            attempt = tx.consoles.begin(board="b1", history_id=None, now=old)
            tx.consoles.append(attempt, "boot\n", old)
    clock.advance(40 * 86400)
    pruned = engine.sweeper.prune(consoles_older_than=timedelta(days=30))
    assert pruned["consoles"] == 2
    assert [a["attempt"] for a in _attempts(engine.store, "b1")] == [3]
    assert engine.sweeper.prune(consoles_older_than=None)["consoles"] == 0


def _attempts(store, board):
    with store.unit() as tx:
        return tx.consoles.attempts(board)
