"""``corral watch``: the stream of committed changes, from the database or a server."""

from __future__ import annotations

import json
import os

import click

from corral.cli.context import CliContext


def register(root: click.Group) -> None:
    root.add_command(watch)


@click.command()
@click.option("--kind", "kinds", multiple=True, help="Only this machine kind (repeatable).")
@click.option("--name", "names", multiple=True, help="Only this machine (repeatable).")
@click.option("--state", "states", multiple=True, help="Only rows entering this state.")
@click.option("--event", "events", multiple=True, help="Only this event (repeatable).")
@click.option("--source", "sources", multiple=True,
              type=click.Choice(["callback", "timeout", "operation", "operator"]))
@click.option("--after", type=click.IntRange(0), help="Replay from after this history id "
              "(0: everything kept); without it, from now.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line.")
@click.pass_obj
def watch(obj: CliContext, kinds: tuple[str, ...], names: tuple[str, ...],
          states: tuple[str, ...], events: tuple[str, ...], sources: tuple[str, ...],
          after: int | None, as_json: bool) -> None:
    """Follow every change as it commits, in commit order (Ctrl-C stops).

    From the database, or from a server given --url (GET /api/v1/events),
    which it reconnects to after a dropped connection, resuming after the
    last change it printed: nothing is missed or printed twice."""
    filters = {"kind": list(kinds), "name": list(names), "state": list(states),
               "event": list(events), "source": list(sources)}
    if obj.url:
        from corral.cli.clients import follow_remote

        documents = follow_remote(obj.url, os.environ.get("CORRAL_TOKEN"), after=after,
                                  filters=filters)
    else:
        from corral.stream import follow

        documents = follow(obj.engine().store, after=after, filters=filters)
    try:
        for doc in documents:
            if as_json:
                click.echo(json.dumps(doc, separators=(",", ":"), default=str))
                continue
            who = f" {doc['actor']}" if doc.get("actor") else ""
            why = f": {doc['reason']}" if doc.get("reason") else ""
            click.echo(f"{doc['at'][:19]} #{doc['id']} {doc['kind']} {doc['name']} "
                       f"{doc['from_state'] or '-'} -> {doc['to_state']} {doc['event']} "
                       f"({doc['source']}{who}{why})")
    except KeyboardInterrupt:
        pass
