"""``corral board``: the shared machine commands, plus importing an inventory and
issuing the token a board calls back with."""

from __future__ import annotations

from pathlib import Path

import click

from corral.cli.clients import RemoteBoards
from corral.cli.commands.machines import add_machine_commands
from corral.cli.context import CliContext, actor


def register(root: click.Group) -> None:
    root.add_command(board)


@click.group()
def board() -> None:
    """Boards: import, inspect, drive."""


add_machine_commands(board, "board")


@board.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def board_import(obj: CliContext, file: Path) -> None:
    """Create or update boards from a YAML inventory (all or nothing)."""
    from corral.inventory import load_inventory

    inventory = load_inventory(file)
    engine = obj.engine()
    created = engine.import_machines("board", inventory, actor=actor(),
                                     reason=f"imported from {file.name}")
    click.echo(f"{len(created)} boards created, {len(inventory) - len(created)} updated")


@board.command("token")
@click.argument("name")
@click.pass_obj
def board_token(obj: CliContext, name: str) -> None:
    """Issue (or rotate) the token board NAME uses for callbacks; prints it once."""
    from corral.tokens import TokenStore

    click.echo(TokenStore(obj.engine().store).issue_for_board(name))


@board.command("check")
@click.argument("name")
@click.option("--loop", default=0, show_default=True, type=click.IntRange(0, 1000),
              help="Burn-in: checks to run after this one, each as soon as the last passed "
                   "(until one fails); `corral board explain` shows the pass rate.")
@click.option("--reason", help="Recorded in the history.")
@click.pass_obj
def board_check(obj: CliContext, name: str, loop: int, reason: str | None) -> None:
    """Health-check board NAME now: it queues for a check (ready, suspect,
    unknown and failed boards; a held board's lease must end first)."""
    boards = obj.boards("board")
    if isinstance(boards, RemoteBoards):
        answer = boards.post(f"/api/v1/boards/{name}/check", {"loop": loop, "reason": reason})
        result = {"from_state": answer["from_state"], "to_state": answer["state"]}
    else:
        from corral.health.service import request_check

        fired = request_check(obj.engine(), name, loop=loop, actor=actor(), reason=reason,
                              role="admin")
        result = {"from_state": fired.from_state, "to_state": fired.to_state}
    more = f"; then {loop} more" if loop else ""
    click.echo(f"{name}: {result['from_state']} -> {result['to_state']} (a health check "
               f"is queued{more})")
