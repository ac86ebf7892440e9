"""``corral simulate``: a simulated lab that talks to a running server.

``simulate boards`` plays boards reporting their boot progress over HTTP, so a
lab can be exercised without any hardware (``serve --simulate`` runs the
operations themselves on the simulated backend); ``simulate runs`` plays test
runs of a few owners that lease those boards (docs/leases.md).
"""

from __future__ import annotations

import signal
import threading
from collections import Counter

import click

from corral.cli.context import CliContext


def register(root: click.Group) -> None:
    root.add_command(simulate)


@click.group()
def simulate() -> None:
    """A simulated lab: boards, and test runs that lease them."""


@simulate.command("boards")
@click.option("--count", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--prefix", default="sim-", show_default=True,
              help="Boards are named PREFIX0001, PREFIX0002, ...")
@click.option("--url", "server", metavar="URL", envvar="CORRAL_URL",
              default="http://127.0.0.1:8080", show_default=True,
              help="The Corral server the boards report to.")
@click.option("--seconds", type=float, help="Stop after this long (default: until Ctrl-C).")
@click.pass_obj
def simulate_boards(obj: CliContext, count: int, prefix: str, server: str,
                    seconds: float | None) -> None:
    """Play COUNT boards reporting their boot progress over HTTP.

    Boards missing from the database are created; each gets a fresh board token
    (issued through the database, so run this beside the server). The
    reimages they ask for now and then go through an operator token
    (``simulated-lab``), as a lab's test jobs would: a board may not order
    its own reimage.
    """
    import asyncio

    from corral.simulate.boards import BoardBehaviour, run_boards
    from corral.tokens import TokenStore

    server = _server(obj, server)
    settings = obj.settings
    engine = obj.engine(beside_server=True)
    names = [f"{prefix}{i:04d}" for i in range(1, count + 1)]
    existing = {row.name for row in engine.list_machines("board")}
    missing = {n: {"arch": "amd64", "subarch": "generic"} for n in names if n not in existing}
    if missing:
        engine.import_machines("board", missing, actor="simulator",
                               reason="created by corral simulate boards")
    tokens = TokenStore(engine.store)
    issued = {n: tokens.issue_for_board(n) for n in names}
    lab_token = tokens.issue("simulated-lab", "operator")
    behaviour = BoardBehaviour(boot_seconds=settings.sim_boot_seconds,
                               install_seconds=settings.sim_install_seconds,
                               install_failure=settings.sim_install_failure,
                               reimage_rate=settings.sim_reimage_rate, seed=settings.sim_seed)

    async def main() -> Counter[str]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if seconds is not None:
            loop.call_later(seconds, stop.set)
        return await run_boards(server, issued, behaviour, stop, lab_token=lab_token)

    click.echo(f"{count} simulated boards reporting to {server}", err=True)
    tally = asyncio.run(main())
    click.echo(" ".join(f"{k}={v}" for k, v in sorted(tally.items())) or "nothing to report")


@simulate.command("runs")
@click.option("--owners", default="alice,bob", show_default=True,
              help="Comma-separated owners; each gets a user token of that name.")
@click.option("--parallel", type=click.IntRange(1, 100), default=8, show_default=True,
              help="Runs each owner keeps going at once.")
@click.option("--runs-per-owner", type=click.IntRange(1), help="Stop after this many runs "
              "per owner (default: until Ctrl-C or --seconds).")
@click.option("--seconds", type=float, help="Stop after this long (default: until Ctrl-C).")
@click.option("--forget-rate", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of runs that forget to heartbeat (their lease ends by heartbeat).")
@click.option("--abandon-rate", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Share of runs that walk away from their lease (it ends at its expiry).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The runs' random seed (what they ask for, who forgets).")
@click.option("--url", "server", metavar="URL", envvar="CORRAL_URL",
              default="http://127.0.0.1:8080", show_default=True,
              help="The Corral server the runs lease from.")
@click.pass_obj
def simulate_runs(obj: CliContext, owners: str, parallel: int, runs_per_owner: int | None,
                  seconds: float | None, forget_rate: float, abandon_rate: float, seed: int,
                  server: str) -> None:
    """Play test runs of OWNERS that lease boards over HTTP.

    Each run asks for one or two boards by a selector (rack labels, arch),
    waits its turn, holds them for a while with a heartbeat, reboots one as
    its holder, and releases the lease; some forget to heartbeat or walk
    away. Each owner gets a fresh user token (issued through the database,
    so run this beside the server). Ctrl-C releases every lease still held.
    """
    from corral.errors import InvalidRequest
    from corral.simulate.runs import RunBehaviour, format_tally, run_runs
    from corral.tokens import TokenStore

    names = [o.strip() for o in owners.split(",") if o.strip()]
    if not names or len(set(names)) != len(names):
        raise InvalidRequest(f"--owners must name one or more different owners, not {owners!r}")
    if forget_rate + abandon_rate > 1:
        raise InvalidRequest("--forget-rate and --abandon-rate add up to more than 1")
    server = _server(obj, server)
    tokens = TokenStore(obj.engine(beside_server=True).store)
    issued = {name: tokens.issue(name, "user") for name in names}
    behaviour = RunBehaviour(parallel=parallel, forget_rate=forget_rate,
                             abandon_rate=abandon_rate, seed=seed)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Installed explicitly: a shell starts a background job (`make run`)
        # with SIGINT ignored.
        signal.signal(signum, lambda *_: stop.set())
    if seconds is not None:
        timer = threading.Timer(seconds, stop.set)
        timer.daemon = True
        timer.start()
    click.echo(f"{len(names)} owners ({', '.join(names)}) running {parallel} test runs each "
               f"against {server}", err=True)
    tally = run_runs(server, issued, behaviour, stop, runs_per_owner=runs_per_owner)
    for line in format_tally(tally):
        click.echo(line)


def _server(obj: CliContext, server: str) -> str:
    """The server the simulation talks to: its own --url, else the root
    ``corral --url`` (which names the same thing), else the default."""
    given = click.get_current_context().get_parameter_source("server")
    if obj.url and given is click.core.ParameterSource.DEFAULT:
        return obj.url
    return server

