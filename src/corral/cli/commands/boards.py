"""``corral board``: the shared machine commands, plus importing an inventory and
issuing the token a board calls back with."""

from __future__ import annotations

from pathlib import Path

import click

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
