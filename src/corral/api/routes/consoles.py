"""A board's captured serial console (docs/console-capture.md): its boot
attempts, and an attempt's text a page at a time.

No ``from __future__ import annotations``: FastAPI reads the endpoint
annotations at run time.
"""

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, Query

from corral import console
from corral.api.callbacks import NAME
from corral.api.deps import EngineDep, Viewer
from corral.api.errors import ERRORS
from corral.api.models import ConsoleAttemptOut, ConsoleCaptureOut, ConsoleOut, ConsoleTextOut
from corral.console import MAX_READ, ConsoleText

router = APIRouter(tags=["boards"])

BoardName = Annotated[str, Path(pattern=NAME, description="The board's name.")]


def _text(board: str, page: ConsoleText) -> ConsoleTextOut:
    return ConsoleTextOut(board=board, attempt=page.attempt.attempt, offset=page.offset,
                          next_offset=page.next_offset, chars=page.attempt.chars,
                          text=page.text)


@router.get("/api/v1/boards/{name}/console", response_model=ConsoleOut, responses=ERRORS,
            summary="A board's console: its boot attempts and the newest one's text.")
def board_console(name: BoardName, engine: EngineDep, _: Viewer,
                  limit: Annotated[int, Query(ge=1, le=MAX_READ, description=(
                      "The most characters of the newest attempt to return."))] = 65536,
                  ) -> ConsoleOut:
    engine.get("board", name)
    found = console.attempts(engine.store, name)
    claim = console.capture_of(engine.store, name)
    latest = None
    if found:
        latest = _text(name, console.read(engine.store, name, found[-1].attempt,
                                          found[-1].dropped, limit))
    return ConsoleOut(
        board=name,
        capture=ConsoleCaptureOut(owner=claim[0], until=claim[1]) if claim else None,
        attempts=[ConsoleAttemptOut(**{k: v for k, v in asdict(a).items() if k != "board"})
                  for a in found],
        latest=latest)


@router.get("/api/v1/boards/{name}/console/{attempt}", response_model=ConsoleTextOut,
            responses=ERRORS, summary="A page of one boot attempt's console text.")
def board_console_attempt(
        name: BoardName, engine: EngineDep, _: Viewer,
        attempt: Annotated[int, Path(ge=1, le=2**31 - 1,
                                     description="The attempt's number (1, 2, ...).")],
        offset: Annotated[int, Query(ge=0, le=2**62, description=(
            "The first character to return (0: the start; next_offset of the "
            "previous page to read on)."))] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_READ, description=(
            "The most characters to return."))] = 65536,
) -> ConsoleTextOut:
    engine.get("board", name)
    return _text(name, console.read(engine.store, name, attempt, offset, limit))
