"""``corral board console NAME``: a board's captured serial console, per boot
attempt (docs/console-capture.md), from the database or a server
(``--url`` with ``CORRAL_TOKEN``, viewer role or above).
"""

from __future__ import annotations

import os
import time
from typing import Any

import click
from rich.table import Table

from corral.cli.context import CliContext
from corral.cli.output import console as terminal
from corral.cli.output import to_json
from corral.errors import AuthError

# How often --follow looks for new text (seconds).
FOLLOW_SECONDS = 1.0


def register(root: click.Group) -> None:
    board = root.commands.get("board")
    if isinstance(board, click.Group):
        board.add_command(board_console)


class _Local:
    """Read from the database (the board must exist)."""

    def __init__(self, obj: CliContext) -> None:
        self.engine = obj.engine()

    def overview(self, name: str) -> dict[str, Any]:
        from dataclasses import asdict

        from corral import console

        self.engine.get("board", name)
        attempts = [{k: v for k, v in asdict(a).items() if k != "board"}
                    for a in console.attempts(self.engine.store, name)]
        return {"board": name, "attempts": attempts}

    def text(self, name: str, attempt: int, offset: int) -> dict[str, Any]:
        from corral import console

        page = console.read(self.engine.store, name, attempt, offset)
        return {"attempt": attempt, "offset": page.offset, "next_offset": page.next_offset,
                "chars": page.attempt.chars, "text": page.text}


class _Remote:
    def __init__(self, url: str) -> None:
        token = os.environ.get("CORRAL_TOKEN")
        if not token:
            raise AuthError("CORRAL_TOKEN must hold a token (viewer role or above) to use "
                            "--url")
        from corral.client import Corral

        self.corral = Corral(url, token)

    def overview(self, name: str) -> dict[str, Any]:
        return self.corral.call("GET", f"/api/v1/boards/{name}/console",  # type: ignore
                                params={"limit": 1})

    def text(self, name: str, attempt: int, offset: int) -> dict[str, Any]:
        return self.corral.call("GET", f"/api/v1/boards/{name}/console/{attempt}",  # type: ignore
                                params={"offset": offset})


@click.command("console")
@click.argument("name")
@click.option("--attempt", "attempt", type=click.IntRange(min=1),
              help="This boot attempt (1, 2, ...); without it, the newest.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing text as it arrives (and, without --attempt, the "
                   "attempts that follow) until Ctrl-C.")
@click.option("--attempts", "list_attempts", is_flag=True,
              help="List the board's boot attempts instead of printing text.")
@click.option("--json", "as_json", is_flag=True, help="With --attempts: print JSON.")
@click.pass_obj
def board_console(obj: CliContext, name: str, attempt: int | None, follow: bool,
                  list_attempts: bool, as_json: bool) -> None:
    """Print board NAME's serial console as captured, per boot attempt."""
    source: _Local | _Remote = _Remote(obj.url) if obj.url else _Local(obj)
    overview = source.overview(name)
    attempts = overview["attempts"]
    if list_attempts:
        _print_attempts(attempts, as_json)
        return
    if not attempts and not follow:
        click.echo(f"board {name} has no console captured yet", err=True)
        return
    current = attempt or (attempts[-1]["attempt"] if attempts else None)
    offset = 0
    page: dict[str, Any] = {"text": "", "next_offset": 0, "chars": 0}
    try:
        while True:
            if current is not None:
                page = source.text(name, current, offset)
                if page["text"]:
                    click.echo(page["text"], nl=False)
                offset = page["next_offset"]
            if not follow:
                if page["text"] and not page["text"].endswith("\n"):
                    click.echo()
                if page["next_offset"] < page["chars"]:
                    continue  # more than one page
                return
            if attempt is None and offset >= page["chars"]:
                newer = [a["attempt"] for a in source.overview(name)["attempts"]
                         if current is None or a["attempt"] > current]
                if newer:
                    current, offset = newer[0], 0
                    click.echo(f"\n--- attempt {current} ---", err=True)
                    continue
            time.sleep(FOLLOW_SECONDS)
    except KeyboardInterrupt:
        click.echo()


def _print_attempts(attempts: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(to_json(attempts))
        return
    table = Table("attempt", "started", "last output", "characters", "dropped", "history id")
    for a in attempts:
        table.add_row(str(a["attempt"]), str(a["started_at"]), str(a["updated_at"]),
                      str(a["chars"]), str(a["dropped"]), str(a["history_id"] or "-"))
    terminal.print(table)
