"""Boards' serial consoles, as captured per boot attempt
(docs/console-capture.md): the reading side.

``corral serve``'s capture service (:mod:`corral.console.capture`) writes
them; :func:`attempts`, :func:`read` and :func:`wait_for` read them for the
CLI, the HTTP API and health checks::

    from corral import console

    console.attempts(store, "lab-bios-1")                 # [Attempt(attempt=1, ...), ...]
    console.read(store, "lab-bios-1", attempt=2, offset=0)  # ConsoleText
    console.wait_for(store, "lab-bios-1", r"login:", timeout=300, since=entered_at)

Text is stored redacted; offsets count characters from the attempt's start.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corral.errors import NotFound
from corral.store.port import Store

__all__ = ["Attempt", "ConsoleMatch", "ConsoleText", "attempts", "capture_of", "read",
           "search", "wait_for"]

# The most text one read returns (characters): a page.
MAX_READ = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One boot attempt's console: numbered 1, 2, ... per board."""

    board: str
    attempt: int
    #: The history row of the boot that began it (None: before any known boot).
    history_id: int | None
    started_at: datetime
    updated_at: datetime
    #: Characters written in all; the first ``dropped`` of them are gone (the
    #: board's bound), so the text kept is ``[dropped, chars)``.
    chars: int
    dropped: int
    bytes: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Attempt:
        return cls(board=row["board"], attempt=int(row["attempt"]),
                   history_id=row["history_id"], started_at=row["started_at"],
                   updated_at=row["updated_at"], chars=int(row["chars"]),
                   dropped=int(row["dropped"]), bytes=int(row["bytes"]))


@dataclass(frozen=True, kw_only=True)
class ConsoleText:
    """Text of an attempt from ``offset`` (later than asked when the start
    was dropped); ``next_offset`` is where the next read continues."""

    attempt: Attempt
    offset: int
    text: str

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.text)


@dataclass(frozen=True, kw_only=True)
class ConsoleMatch:
    """Where a pattern was found: the attempt, the match's offset, the
    matched text and the whole line it is on."""

    attempt: int
    offset: int
    text: str
    line: str


def attempts(store: Store, board: str) -> list[Attempt]:
    """The board's console attempts, oldest first ([] when none was captured)."""
    with store.unit() as tx:
        return [Attempt.from_row(r) for r in tx.consoles.attempts(board)]


def capture_of(store: Store, board: str) -> tuple[str | None, datetime | None] | None:
    """(owner, claim end) of the process capturing the board's console, or
    None when the board has no console to capture."""
    with store.unit() as tx:
        return tx.consoles.claims().get(board)


def read(store: Store, board: str, attempt: int | None = None, offset: int = 0,
         limit: int = MAX_READ) -> ConsoleText:
    """Up to ``limit`` characters of attempt ``attempt`` (None: the newest)
    from ``offset``.

    Raises:
        NotFound: the board has no such attempt (the message says which it has).
        ValueError: ``offset`` is negative or ``limit`` is not positive.
    """
    if offset < 0 or limit <= 0:
        raise ValueError("offset must be 0 or more and limit more than 0")
    with store.unit() as tx:
        row = tx.consoles.attempt(board, attempt)
        if row is None:
            raise NotFound(_missing(board, attempt, tx.consoles.attempts(board)))
        begin, text = tx.consoles.read(int(row["id"]), offset=offset,
                                       limit=min(limit, MAX_READ))
    return ConsoleText(attempt=Attempt.from_row(row), offset=begin, text=text)


def _missing(board: str, attempt: int | None, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"board {board} has no console captured"
    numbers = [int(r["attempt"]) for r in rows]
    return (f"board {board} has no console attempt {attempt} (it has "
            f"{_ranges(numbers)})")


def _ranges(numbers: list[int]) -> str:
    return f"{numbers[0]}" if len(numbers) == 1 else f"{numbers[0]}..{numbers[-1]}"


def search(store: Store, board: str, pattern: str | re.Pattern[str], *,
           attempt: int | None = None, since: datetime | None = None,
           offset: int = 0) -> ConsoleMatch | None:
    """The first match of ``pattern`` (a regular expression) in the board's
    console, or None: in attempt ``attempt``, else in every attempt that
    began at or after ``since`` (None: the newest attempt only), from
    ``offset`` of the first one looked at."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    for number in _candidates(store, board, attempt, since):
        begin, text = _whole(store, board, number, offset if number == attempt else 0)
        found = regex.search(text)
        if found is not None:
            start = text.rfind("\n", 0, found.start()) + 1
            end = text.find("\n", found.end())
            line = text[start:end if end >= 0 else len(text)]
            return ConsoleMatch(attempt=number, offset=begin + found.start(),
                                text=found.group(0), line=line.rstrip("\r"))
    return None


def _whole(store: Store, board: str, attempt: int, offset: int) -> tuple[int, str]:
    """An attempt's text from ``offset`` to its end (what the board's bound
    keeps, so at most ``console_max_bytes``)."""
    pages: list[str] = []
    begin = at = offset
    while True:
        try:
            page = read(store, board, attempt, at)
        except NotFound:
            break
        if not pages:
            begin = page.offset
        if not page.text:
            break
        pages.append(page.text)
        at = page.next_offset
    return begin, "".join(pages)


def _candidates(store: Store, board: str, attempt: int | None,
                since: datetime | None) -> list[int]:
    if attempt is not None:
        return [attempt]
    found = attempts(store, board)
    if since is None:
        return [found[-1].attempt] if found else []
    return [a.attempt for a in found if a.started_at >= since]


def wait_for(store: Store, board: str, pattern: str | re.Pattern[str], *, timeout: float,
             attempt: int | None = None, since: datetime | None = None,
             poll: float = 0.5, sleep: Callable[[float], None] = time.sleep
             ) -> ConsoleMatch | None:
    """Wait up to ``timeout`` seconds for ``pattern`` (a regular expression)
    on the board's console; the match, or None when the time ran out.

    Looks where :func:`search` looks (``since``: attempts that begin while
    it waits count too, which is what a health step that just power-cycled
    the board wants), every ``poll`` seconds.
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    deadline = time.monotonic() + timeout
    while True:
        found = search(store, board, regex, attempt=attempt, since=since)
        if found is not None or time.monotonic() >= deadline:
            return found
        sleep(min(poll, max(deadline - time.monotonic(), 0.0)))
