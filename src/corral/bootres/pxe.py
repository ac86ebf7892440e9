"""A board's netboot configuration from the published boot resources.

The ``write_pxe_config`` operation of a reimage looks up the winner for the
board's (arch, subarch, release) in the current snapshot, makes its files
reachable under the boot root (``pxe_root/objects/<sha256>``: the
content-addressed files themselves, so a later import cannot change a
board's boot half-way), mints the board's reimage token and writes every
configuration flavour for the board's MAC (see :mod:`corral.bootres.netboot`).
The release comes from the ``reimage`` event (``{"release": "trusty"}``, kept
in the board's vars) or the board's ``release`` attribute.

``boot_local`` (on leaving the reimage path) writes configurations that boot
the local disk and revokes the reimage token.

Every value written into a configuration is refused if it holds a control
character (a newline would add ``DEFAULT`` or ``LABEL`` lines of the
mirror's choosing). Imports refuse such values already; this is the last
line of defence, for a snapshot written before they did.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from corral.bootres.netboot import (
    BootFiles,
    BootRoot,
    cmdline_problem,
    kernel_cmdline,
    normal_mac,
)
from corral.bootres.store import Storage
from corral.bootres.streams import MAX_CMDLINE, has_control_character, read_cmdline
from corral.inventory import BOARD_NAME_RE
from corral.operations.base import OperationContext, OperationFailed


class ReimageTokens(Protocol):
    def issue_for_reimage(self, board: str) -> str: ...
    def revoke_reimage(self, board: str) -> bool: ...


# The longest board name a reimage token's name (reimage:NAME) holds.
MAX_NAME = 200 - len("reimage:")


class BootResourcePxe:
    """A ``PxeWriter`` backed by the boot resource store.

    ``callback_url`` is where boards reach Corral (``boot_callback_url``);
    ``tokens`` mints and revokes reimage tokens; ``board_state`` reads a
    board's current state (None: no such board), so that a write that lost
    a race with the board leaving ``pxe_configuring`` does not leave the
    installer behind.
    """

    def __init__(self, storage: Path, pxe_root: Path, *, callback_url: str,
                 tokens: ReimageTokens,
                 board_state: Callable[[str], str | None] | None = None) -> None:
        self.storage = Storage(storage)
        self.root = BootRoot(pxe_root)
        self.callback_url = callback_url.rstrip("/")
        self.tokens = tokens
        self.board_state = board_state

    def _mac(self, ctx: OperationContext) -> str | None:
        mac = ctx.attrs.get("mac")
        found = normal_mac(mac)
        if mac is not None and found is None:
            raise OperationFailed(f"board {ctx.name}'s mac {mac!r} is not a MAC address")
        return found

    def write(self, ctx: OperationContext) -> Mapping[str, Any]:
        mac, triple = self._target(ctx)
        winner, files = self._winner(triple)
        cmdline = _snapshot_cmdline(files.get("boot-cmdline"))
        served = {leaf: self.root.publish_object(path, path.name)
                  for leaf, path in files.items()
                  if leaf in ("boot-kernel", "boot-initrd", "boot-dtb", "root-image")}
        image = (f"{self.callback_url}/boot/{served['root-image']}"
                 if "root-image" in served else None)
        with self.root.locked(mac):
            # Under the board's lock: a boot_local that follows waits for this
            # write, and one that came first is seen here.
            if self.board_state is not None:
                state = self.board_state(ctx.name)
                # A reimage writes in pxe_configuring, a health check's netboot
                # step in checking.
                if state not in ("pxe_configuring", "checking"):
                    raise OperationFailed(f"board {ctx.name} is {state}, no longer "
                                          "pxe_configuring: nothing written")
            return self._write(ctx, mac, winner, served, cmdline, image, triple[2])

    def _target(self, ctx: OperationContext) -> tuple[str, tuple[str, str, str]]:
        """The board's MAC and its (arch, subarch, release), or why not."""
        if not BOARD_NAME_RE.fullmatch(ctx.name):
            raise OperationFailed(f"board name {ctx.name!r} cannot go on a kernel command "
                                  "line (letters, digits, '.', '_' and '-')")
        if len(ctx.name) > MAX_NAME:
            raise OperationFailed(f"board name {ctx.name[:40]}... is longer than the "
                                  f"{MAX_NAME} characters a reimage token's name holds")
        mac = self._mac(ctx)
        if mac is None:
            raise OperationFailed(f"board {ctx.name} has no mac: firmware finds its boot "
                                  "configuration by MAC address (add mac to the inventory)")
        arch = ctx.attrs.get("arch")
        subarch = ctx.attrs.get("subarch", "generic")
        release = ctx.vars.get("release") or ctx.attrs.get("release")
        if not (isinstance(arch, str) and isinstance(subarch, str)
                and isinstance(release, str) and arch and subarch and release):
            raise OperationFailed(f"board {ctx.name} needs arch, subarch and a release "
                                  f"(reimage with {{\"release\": ...}}); has "
                                  f"{arch}/{subarch}/{release}")
        return mac, (arch, subarch, release)

    def _winner(self, triple: tuple[str, str, str]
                ) -> tuple[Mapping[str, Any], dict[str, Path]]:
        """The current snapshot's winner for ``triple`` and its files, each
        an object of the storage root."""
        arch, subarch, release = triple
        manifest = self.storage.current_manifest()
        if manifest is None:
            raise OperationFailed(f"no boot resources are published under "
                                  f"{self.storage.root}; run `corral bootres import`")
        winner = next((w for w in manifest["winners"]
                       if (w["arch"], w["subarch"], w["release"]) == triple), None)
        if winner is None:
            raise OperationFailed(f"no boot resources for {arch}/{subarch}/{release} in "
                                  f"the current snapshot")
        for key in ("product", "version", "source"):
            _check_one_line(key, winner[key])
        control = self.storage.current / "control" / arch / subarch / release
        # The storage root resolved, then its objects/ by name: an objects/
        # that is itself a symlink pointing out does not widen what is taken.
        objects = self.storage.root.resolve() / "objects"
        files: dict[str, Path] = {}
        for leaf in winner["items"]:
            path = (control / leaf).resolve()
            if (not path.is_relative_to(objects) or path.parent != objects
                    or objects.is_symlink() or not path.is_file()):
                raise OperationFailed(f"the current snapshot's {leaf!r} for "
                                      f"{arch}/{subarch}/{release} is not an object of "
                                      f"{self.storage.root}")
            _check_one_line(leaf, path.name)
            files[leaf] = path
        if "boot-kernel" not in files or "boot-initrd" not in files:
            raise OperationFailed(f"the winner for {arch}/{subarch}/{release} "
                                  f"({winner['product']}) has no boot-kernel and boot-initrd")
        return winner, files

    def _write(self, ctx: OperationContext, mac: str, winner: Mapping[str, Any],
               served: Mapping[str, str], cmdline: str, image: str | None,
               release: str) -> Mapping[str, Any]:
        boot = secrets.token_hex(8)
        token = self.tokens.issue_for_reimage(ctx.name)
        boot_files = BootFiles(
            kernel=served["boot-kernel"], initrd=served["boot-initrd"],
            dtb=served.get("boot-dtb"),
            cmdline=kernel_cmdline(cmdline, url=self.callback_url, board=ctx.name, boot=boot,
                                   token=token, image=image),
            title=f"{ctx.name}: {winner['product']} {winner['version']} from "
                  f"{winner['source']}")
        written = self.root.write(mac, boot_files)
        # Never the token: this result is the event's payload, kept in the history.
        return {"paths": written, "product": winner["product"], "version": winner["version"],
                "kernel": served["boot-kernel"], "release": release, "boot": boot}

    def boot_local(self, ctx: OperationContext) -> Mapping[str, Any]:
        mac = self._mac(ctx)
        if mac is None:
            return {"paths": {}, "reimage_token_revoked": self.tokens.revoke_reimage(ctx.name)}
        with self.root.locked(mac):
            revoked = self.tokens.revoke_reimage(ctx.name)
            return {"paths": self.root.write(mac, None), "reimage_token_revoked": revoked}


def _check_one_line(what: str, value: object) -> str:
    """``value`` if it is a string that cannot add a line to a PXE configuration.

    Raises:
        OperationFailed: it is not a string, or holds a control character.
    """
    if not isinstance(value, str) or has_control_character(value):
        raise OperationFailed(f"the current snapshot's {what} {value!r} holds a control "
                              "character or is not text; refusing to write it into a PXE "
                              "configuration")
    return value


def _snapshot_cmdline(path: Path | None) -> str:
    """The snapshot's boot-cmdline (empty without one), refused if it is not
    one line of plain text or holds what a boot configuration must not."""
    if path is None:
        return ""
    with open(path, "rb") as handle:
        data = handle.read(MAX_CMDLINE + 1)
    found = read_cmdline(data)
    if found is None:
        raise OperationFailed(f"the current snapshot's boot-cmdline {data[:80]!r} "
                              "holds a control character or is not one line of "
                              "text; refusing to write it into a PXE configuration")
    problem = cmdline_problem(found)
    if problem is not None:
        raise OperationFailed(f"the current snapshot's boot-cmdline {found[:80]!r} "
                              f"{problem}; refusing to write it into a boot "
                              "configuration")
    return found
