"""``corral webhook``: subscriptions that POST matching changes, signed, at least once."""

from __future__ import annotations

from pathlib import Path

import click

from corral.cli.context import CliContext
from corral.cli.output import to_json


def register(root: click.Group) -> None:
    root.add_command(webhook)


@click.group()
def webhook() -> None:
    """Webhook subscriptions: matching events POSTed, signed, at least once."""


@webhook.command("add")
@click.argument("url")
@click.option("--name", help="The subscription's name (default: hook-N).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="kind, name, state, event or source (repeatable; values of one key "
                   "are alternatives).")
@click.option("--secret-file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A file whose first line is the HMAC key deliveries are signed with.")
@click.option("--from-start", is_flag=True, help="Deliver every event kept, not only new ones.")
@click.pass_obj
def webhook_add(obj: CliContext, url: str, name: str | None, filters: tuple[str, ...],
                secret_file: Path, from_start: bool) -> None:
    """Subscribe URL to the events matching the filters."""
    from corral.webhooks import add_subscription

    parsed: dict[str, list[str]] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--filter")
        parsed.setdefault(key, []).append(value)
    try:
        secret = secret_file.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise click.BadParameter(f"cannot read a secret from {secret_file}: "
                                 f"{getattr(exc, 'strerror', None) or 'empty or not text'}",
                                 param_hint="--secret-file") from None
    doc = add_subscription(obj.engine(), name=name, url=url, filters=parsed, secret=secret,
                           from_start=from_start)
    click.echo(f"webhook {doc['name']} -> {doc['url']} from history id {doc['cursor']}")


@webhook.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def webhook_list(obj: CliContext, as_json: bool) -> None:
    """Subscriptions with their status, cursor and last error (never the secret)."""
    from corral.webhooks import list_subscriptions

    hooks = list_subscriptions(obj.engine().store)
    if as_json:
        click.echo(to_json(hooks))
        return
    for hook in hooks:
        click.echo(f"{hook['name']}  {hook['status']}  {hook['url']}  after #{hook['cursor']}  "
                   f"delivered {hook['delivered']}  filters {hook['filters'] or '-'}"
                   + (f"  last error: {hook['last_error']}" if hook["last_error"] else ""))
    if not hooks:
        click.echo("no webhooks")


@webhook.command("remove")
@click.argument("name")
@click.pass_obj
def webhook_remove(obj: CliContext, name: str) -> None:
    """Delete a subscription."""
    from corral.webhooks import remove_subscription

    remove_subscription(obj.engine().store, name)
    click.echo(f"webhook {name} removed")
