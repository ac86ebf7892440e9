"""``corral mo-sim``: a simulated Maintenance Orchestrator, the gRPC service pools'
OS overrides go through, with faults to inject."""

from __future__ import annotations

import click

from corral.cli.signals import wait_for_stop_signal
from corral.errors import CorralError


def register(root: click.Group) -> None:
    root.add_command(mo_sim)


@click.command("mo-sim")
@click.option("--listen", default="127.0.0.1:50051", show_default=True, metavar="HOST:PORT")
@click.option("--nodes-per-pool", type=click.IntRange(1, 10_000), default=10,
              show_default=True)
@click.option("--batch", type=click.IntRange(1), default=2, show_default=True,
              help="Nodes that take an override per tick.")
@click.option("--tick", type=click.FloatRange(0.001), default=1.0, show_default=True,
              help="Seconds between rollout steps.")
@click.option("--unavailable-rate", type=click.FloatRange(0, 1), default=0.0,
              show_default=True, help="Share of calls answered UNAVAILABLE.")
@click.option("--stuck-nodes", type=click.IntRange(0), default=0, show_default=True,
              help="Nodes per pool that never leave their version.")
@click.option("--wrong-version-nodes", type=click.IntRange(0), default=0, show_default=True,
              help="Nodes per pool that report a different version.")
@click.option("--seed", type=int, default=0, show_default=True)
def mo_sim(listen: str, nodes_per_pool: int, batch: int, tick: float,
           unavailable_rate: float, stuck_nodes: int, wrong_version_nodes: int,
           seed: int) -> None:
    """Run a simulated Maintenance Orchestrator (gRPC) until SIGTERM or Ctrl-C."""
    from corral.config import parse_listen
    from corral.mo.simulator import Faults, MoSimulator, serve_simulator

    parse_listen(listen, "--listen")
    simulator = MoSimulator(nodes_per_pool=nodes_per_pool, batch=batch, tick=tick, seed=seed,
                            faults=Faults(unavailable_rate=unavailable_rate,
                                          stuck_nodes=stuck_nodes,
                                          wrong_version_nodes=wrong_version_nodes))
    try:
        server, port = serve_simulator(simulator, listen)
    except (OSError, RuntimeError) as exc:
        raise CorralError(f"cannot listen on {listen}: {exc}") from None
    click.echo(f"simulated MO listening on port {port}", err=True)
    wait_for_stop_signal()
    server.stop(grace=2).wait()
