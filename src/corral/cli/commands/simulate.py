"""``corral simulate``: simulated lab hardware that talks to a running server.

``simulate boards`` plays boards reporting their boot progress over HTTP, so a
lab can be exercised without any hardware (``serve --simulate`` runs the
operations themselves on the simulated backend).
"""

from __future__ import annotations

import signal
from collections import Counter

import click

from corral.cli.context import CliContext


def register(root: click.Group) -> None:
    root.add_command(simulate)


@click.group()
def simulate() -> None:
    """Simulated lab hardware."""


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

    settings = obj.settings
    engine = obj.engine()
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
