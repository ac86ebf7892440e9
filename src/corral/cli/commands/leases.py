"""``corral lease``: ask for boards, hold them, give them back (docs/leases.md);
and ``corral board holders``.

Against the database (the local CLI acts as admin, and its leases are the
login name's), or a server with ``--url`` and ``CORRAL_TOKEN`` through
:mod:`corral.client`.
"""

from __future__ import annotations

import builtins
import os
import re
import time
from typing import Any

import click
from rich.table import Table

from corral.cli.context import CliContext, actor
from corral.cli.output import console, to_json
from corral.errors import AuthError, Conflict, InvalidRequest, NotFound

ENDED = ("returning", "closed", "cancelled", "expired", "revoked", "failed")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def register(root: click.Group) -> None:
    root.add_command(lease)
    board = root.commands.get("board")
    if isinstance(board, click.Group):
        board.add_command(board_holders)


def seconds(value: str | None, what: str) -> int | None:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` as seconds."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match or int(match[1]) == 0:
        raise InvalidRequest(f"{what} must be a positive number of seconds, or with s, m, h "
                             f"or d (30m), not {value!r}")
    return int(match[1]) * UNITS[match[2]]


class _Local:
    """The lease service on the database (as admin; owner: the login name)."""

    def __init__(self, obj: CliContext) -> None:
        from corral.app import lease_service
        from corral.leases import Caller

        service = lease_service(obj.engine(), obj.settings)
        if service is None:
            raise NotFound("this lab's statemachines/ has no lease machine (lease.yaml): "
                           "it has no leases")
        self.service = service
        self.caller = Caller(name=actor(), role="admin")

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        from corral.leases import LeaseRequest
        from corral.validation import validate

        spec, problems = validate(LeaseRequest, body, "request")
        if problems or spec is None:
            raise InvalidRequest("; ".join(p.message for p in problems))
        return self.service.request(spec, self.caller)

    def show(self, name: str, token: str | None = None) -> dict[str, Any]:
        return self.service.show(name)

    def list(self, state: str | None, owner: str | None, open_only: bool) -> list[Any]:
        return self.service.list(states=[state] if state else None, owner=owner,
                                 open_only=open_only)

    def explain(self, name: str) -> dict[str, Any]:
        return self.service.explain(name)

    def renew(self, name: str, duration: int | None, token: str | None) -> dict[str, Any]:
        return self.service.renew(name, self.caller, duration)

    def heartbeat(self, name: str, token: str | None) -> dict[str, Any]:
        return self.service.heartbeat(name, self.caller)

    def release(self, name: str, reason: str | None, token: str | None) -> dict[str, Any]:
        return self.service.release(name, self.caller, reason=reason)

    def revoke(self, name: str, reason: str, if_state: str | None) -> dict[str, Any]:
        return self.service.revoke(name, self.caller, reason=reason, if_state=if_state)

    def holders(self, board: str, at: str | None) -> builtins.list[dict[str, Any]]:
        from datetime import datetime

        when = None
        if at:
            try:
                when = datetime.fromisoformat(at)
            except ValueError:
                raise InvalidRequest(f"--at must be an ISO time, not {at!r}") from None
        return self.service.holders(board, at=when)


class _Remote:
    """A server's lease routes (token: CORRAL_TOKEN)."""

    def __init__(self, url: str) -> None:
        token = os.environ.get("CORRAL_TOKEN")
        if not token:
            raise AuthError("CORRAL_TOKEN must hold a token (user role or above) to use --url")
        from corral.client import Corral

        self.corral = Corral(url, token)

    def _call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        return self.corral.call(method, path, token=token, **kw)

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/v1/leases", json=body)  # type: ignore[no-any-return]

    def show(self, name: str, token: str | None = None) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/leases/{name}", token)  # type: ignore[no-any-return]

    def list(self, state: str | None, owner: str | None, open_only: bool) -> list[Any]:
        params = {k: v for k, v in (("state", state), ("owner", owner)) if v}
        if open_only:
            params["open"] = "true"
        return self._call("GET", "/api/v1/leases", params=params)  # type: ignore[no-any-return]

    def explain(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/leases/{name}/explain")  # type: ignore[no-any-return]

    def renew(self, name: str, duration: int | None, token: str | None) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/leases/{name}/renew", token,  # type: ignore
                          json={"duration": duration})

    def heartbeat(self, name: str, token: str | None) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/leases/{name}/heartbeat", token)  # type: ignore

    def release(self, name: str, reason: str | None, token: str | None) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/leases/{name}/release", token,  # type: ignore
                          json={"reason": reason})

    def revoke(self, name: str, reason: str, if_state: str | None) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/leases/{name}/revoke",  # type: ignore
                          json={"reason": reason, "if_state": if_state})

    def holders(self, board: str, at: str | None) -> builtins.list[dict[str, Any]]:
        return self._call("GET", f"/api/v1/boards/{board}/holders",  # type: ignore
                          params={"at": at} if at else None)


def leases(obj: CliContext) -> _Local | _Remote:
    return _Remote(obj.url) if obj.url else _Local(obj)


@click.group()
def lease() -> None:
    """Leases: ask for boards, hold them alone, give them back."""


TOKEN = click.option("--token", "lease_token", envvar="CORRAL_LEASE_TOKEN",
                     help="The lease's own token (from its request; or CORRAL_LEASE_TOKEN).")
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _print(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(to_json(doc))
        return
    boards = ", ".join(doc.get("boards") or []) or "-"
    line = f"{doc['id']}: {doc['state']}; boards: {boards}"
    if doc.get("expires_at"):
        line += f"; expires {doc['expires_at']}"
    if doc.get("ended_by"):
        line += f"; ended: {doc['ended_by']}"
    click.echo(line)
    if doc.get("token"):
        click.echo(f"token: {doc['token']}")


@lease.command("request")
@click.option("--board", help="This board, by name.")
@click.option("--selector", help="Boards whose labels and facts match, e.g. "
                                 "'arch=arm64,rack in (r1,r2),!broken'.")
@click.option("--count", type=click.IntRange(1, 100), default=1, show_default=True,
              help="How many boards (all or none).")
@click.option("--duration", help="How long to hold them: 30m, 2h (default: the lab's).")
@click.option("--release", "--image", "release", help="The release the boards must run "
                                                     "(reimaged to it unless they do).")
@click.option("--priority", type=click.IntRange(-100, 100), default=0, show_default=True)
@click.option("--wait", is_flag=True, help="Block until the lease is active.")
@click.option("--wait-timeout", help="With --wait: give up after this long (10m); the lease "
                                     "is then released and the command exits 4.")
@click.option("--heartbeat", help="End the lease if no heartbeat comes within this (60s).")
@click.option("--on-return", type=click.Choice(["reimage", "power_cycle"]), default="reimage",
              show_default=True, help="What a board goes through when the lease ends.")
@click.option("--purpose", help="Why (shown to operators and in the history).")
@click.option("--project", help="Whose fair share it counts against (default: the owner).")
@JSON
@click.pass_obj
def lease_request(obj: CliContext, board: str | None, selector: str | None, count: int,
                  duration: str | None, release: str | None, priority: int, wait: bool,
                  wait_timeout: str | None, heartbeat: str | None, on_return: str,
                  purpose: str | None, project: str | None, as_json: bool) -> None:
    """Ask for boards; prints the lease id, its boards and its token (shown once)."""
    body = {"board": board, "selector": selector, "count": count,
            "duration": seconds(duration, "--duration"), "release": release,
            "priority": priority, "wait_timeout": seconds(wait_timeout, "--wait-timeout"),
            "heartbeat": seconds(heartbeat, "--heartbeat"), "on_return": on_return,
            "purpose": purpose, "project": project}
    client = leases(obj)
    doc = client.request({k: v for k, v in body.items() if v is not None})
    token = doc.get("token")
    if wait:
        limit = float(body["wait_timeout"] or 600)
        deadline = time.monotonic() + limit
        while doc["state"] != "active":
            if doc["state"] in ENDED:
                raise Conflict(f"lease {doc['id']} ended while waiting: {doc['state']}")
            if time.monotonic() >= deadline:
                client.release(doc["id"], "the wait timed out", token)
                raise Conflict(f"lease {doc['id']} was not granted within {limit} s; it was "
                               f"released")
            time.sleep(1)
            doc = client.show(doc["id"], token)
    _print({**doc, "token": token}, as_json)


@lease.command("show")
@click.argument("name")
@JSON
@click.pass_obj
def lease_show(obj: CliContext, name: str, as_json: bool) -> None:
    """One lease."""
    doc = leases(obj).show(name)
    click.echo(to_json(doc)) if as_json else _print(doc, False)


@lease.command("list")
@click.option("--state", help="Only leases in this state.")
@click.option("--owner", help="Only this owner's leases.")
@click.option("--all", "everything", is_flag=True, help="Ended leases too.")
@JSON
@click.pass_obj
def lease_list(obj: CliContext, state: str | None, owner: str | None, everything: bool,
               as_json: bool) -> None:
    """Leases, newest first (those not ended, unless --all or --state)."""
    rows = leases(obj).list(state, owner, open_only=not everything and state is None)
    if as_json:
        click.echo(to_json(rows))
        return
    table = Table("lease", "state", "owner", "prio", "boards", "wants", "expires", box=None)
    for row in rows:
        wants = row["board"] or f"{row['count']} x {row['selector'] or 'any'}"
        table.add_row(row["id"], row["state"], row["owner"], str(row["priority"]),
                      ", ".join(row["boards"]) or "-", wants, row["expires_at"] or "-")
    console.print(table)


@lease.command("explain")
@click.argument("name")
@JSON
@click.pass_obj
def lease_explain(obj: CliContext, name: str, as_json: bool) -> None:
    """Why a lease waits: its place, what ruled boards out, who blocks it."""
    doc = leases(obj).explain(name)
    if as_json:
        click.echo(to_json(doc))
        return
    click.echo(f"{doc['id']} ({doc['state']}, {doc['owner']}): wants {doc['wants']}")
    click.echo(f"  {doc['why']}")
    for block in doc.get("blocking", []):
        click.echo(f"  blocked by {block['lease']} ({block['owner']}, {block['boards']} "
                   f"board(s), until {block['expires_at'] or '-'})")
    if doc.get("estimate"):
        click.echo(f"  estimated start: {doc['estimate']}")


@lease.command("renew")
@click.argument("name")
@click.option("--duration", help="From now (default: the lease's own duration).")
@TOKEN
@JSON
@click.pass_obj
def lease_renew(obj: CliContext, name: str, duration: str | None, lease_token: str | None,
                as_json: bool) -> None:
    """Push an active lease's expiry."""
    _print(leases(obj).renew(name, seconds(duration, "--duration"), lease_token), as_json)


@lease.command("heartbeat")
@click.argument("name")
@TOKEN
@JSON
@click.pass_obj
def lease_heartbeat(obj: CliContext, name: str, lease_token: str | None, as_json: bool) -> None:
    """Say the holder is alive."""
    _print(leases(obj).heartbeat(name, lease_token), as_json)


@lease.command("release")
@click.argument("name")
@click.option("--reason", help="Recorded in the lease's history.")
@TOKEN
@JSON
@click.pass_obj
def lease_release(obj: CliContext, name: str, reason: str | None, lease_token: str | None,
                  as_json: bool) -> None:
    """Give a lease back (a queued one is cancelled)."""
    _print(leases(obj).release(name, reason, lease_token), as_json)


@lease.command("revoke")
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded).")
@click.option("--if-state", help="Only if the lease is in this state now.")
@JSON
@click.pass_obj
def lease_revoke(obj: CliContext, name: str, reason: str, if_state: str | None,
                 as_json: bool) -> None:
    """End anyone's lease now (admin)."""
    _print(leases(obj).revoke(name, reason, if_state), as_json)


@click.command("holders")
@click.argument("name")
@click.option("--at", help="Only who held it at this ISO time.")
@JSON
@click.pass_obj
def board_holders(obj: CliContext, name: str, at: str | None, as_json: bool) -> None:
    """Who held board NAME (at a time), newest first."""
    rows = leases(obj).holders(name, at)
    if as_json:
        click.echo(to_json(rows))
        return
    table = Table("lease", "owner", "epoch", "from", "until", "purpose", box=None)
    for row in rows:
        table.add_row(row["lease"], row["owner"], str(row["epoch"]), row["from"],
                      row["until"] or "(holds it)", row["purpose"] or "")
    console.print(table)
