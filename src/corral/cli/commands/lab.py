"""``corral lab``: a lab of QEMU boards that netboot what Corral writes.

``lab up`` builds the lab, prepares the configured database by running other
``corral`` commands as subprocesses, then runs ``corral serve`` beside the
boards until Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from corral.cli.context import CliContext
from corral.cli.signals import wait_for_stop_signal
from corral.errors import CorralError


def register(root: click.Group) -> None:
    root.add_command(lab)


@click.group()
def lab() -> None:
    """A lab of QEMU boards that netboot what Corral writes (see docs/lab.md)."""


@lab.command("up")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/lab"), show_default=True,
              help="Where the lab's files, disks and database live.")
@click.option("--boards", type=click.IntRange(1, 250), default=3, show_default=True,
              help="How many boards (BIOS, UEFI and iPXE, in turn).")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Where Corral's HTTP service listens (the boards reach it as 10.0.2.2); "
                   "with the netns network, on this port of the host's end of the lab's "
                   "veth pair instead.")
@click.option("--accel", type=click.Choice(["auto", "tcg", "kvm"]), default="auto",
              show_default=True,
              help="QEMU's accelerator; auto: KVM where a probe shows iPXE runs under it, "
                   "else TCG.")
@click.option("--network", type=click.Choice(["auto", "netns", "user"]), default="auto",
              show_default=True,
              help="The boards' network: dnsmasq on a bridge in a network namespace "
                   "(netns, as root), QEMU's user network (user); auto: netns where "
                   "`ip netns add` works.")
@click.pass_obj
def lab_up(obj: CliContext, directory: Path, boards: int, listen: str, accel: str,
           network: str) -> None:
    """Build the lab, start its boards and serve them until Ctrl-C.

    Sets up the boot root, the boot resources, the configured database and the
    inventory, then runs `corral serve` with pxe_root and boot_callback_url
    pointing at the lab. Reimage a board from another terminal: corral board
    event lab-bios-1 reimage.
    """
    import subprocess

    from corral.config import parse_listen
    from corral.lab import Lab

    _host, port = parse_listen(listen, "--listen")
    the_lab = Lab(directory, boards=boards, accel=accel, network=network)
    the_lab.build()
    # The configured database, so that `corral board ...` in another terminal sees the lab.
    env = {**os.environ, **the_lab.settings(port),
           "CORRAL_DATABASE_URL": obj.database_url}
    corral = [sys.executable, "-m", "corral.cli.main"]
    for args in (["db", "upgrade"],
                 ["bootres", "import", "--config", str(the_lab.directory / "import.yaml")],
                 ["board", "import", str(the_lab.inventory)]):
        done = subprocess.run([*corral, *args], env=env, check=False)
        if done.returncode != 0:
            raise CorralError(f"corral {' '.join(args)} failed (exit {done.returncode})")
    if the_lab.namespace:
        listen = f"{the_lab.corral_host}:{port}"
    the_lab.start(port)
    click.echo(f"{len(the_lab.boards)} boards running under {the_lab.accel} on the "
               f"{the_lab.network} network; consoles in "
               f"{the_lab.directory / 'vm'}/*/console.log; Corral on {listen}", err=True)
    try:
        server = subprocess.Popen([*corral, "serve", "--listen", listen], env=env)
    except BaseException:
        the_lab.stop()
        raise
    try:
        wait_for_stop_signal()
    finally:
        server.terminate()
        server.wait(timeout=30)
        the_lab.stop()
