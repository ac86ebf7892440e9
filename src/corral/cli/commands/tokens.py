"""``corral token``: the operator tokens the HTTP API authenticates."""

from __future__ import annotations

import click
from rich.table import Table

from corral.cli.context import CliContext
from corral.cli.output import console, to_json


def register(root: click.Group) -> None:
    root.add_command(token)


@click.group()
def token() -> None:
    """Operator tokens for the HTTP API."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True,
              help="viewer reads; operator also fires events and forces states; admin also "
                   "retires boards.")
@click.pass_obj
def token_create(obj: CliContext, name: str, role: str) -> None:
    """Create (or rotate) operator token NAME; prints it once."""
    from corral.tokens import TokenStore

    click.echo(TokenStore(obj.engine().store).issue(name, role))


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def token_list(obj: CliContext, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    from corral.tokens import TokenStore

    rows = TokenStore(obj.engine().store).list()
    docs = [{"name": r.name, "role": r.role, "board": r.board, "created_at": r.created_at,
             "revoked_at": r.revoked_at} for r in rows]
    if as_json:
        click.echo(to_json(docs))
        return
    table = Table(box=None, pad_edge=False)
    for title in ("NAME", "ROLE", "CREATED", "REVOKED"):
        table.add_column(title)
    for r in rows:
        table.add_row(r.name, r.role, r.created_at.strftime("%Y-%m-%d %H:%M"),
                      r.revoked_at.strftime("%Y-%m-%d %H:%M") if r.revoked_at else "-")
    console.print(table)


@token.command("revoke")
@click.argument("name")
@click.pass_obj
def token_revoke(obj: CliContext, name: str) -> None:
    """Revoke token NAME (a board's is named board:NAME)."""
    from corral.tokens import TokenStore

    TokenStore(obj.engine().store).revoke(name)
    click.echo(f"revoked {name}")
