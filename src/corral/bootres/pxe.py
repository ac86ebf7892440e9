"""Writing a board's PXE configuration from the published boot resources.

The ``write_pxe_config`` operation of a reimage looks up the winner for the
board's (arch, subarch, release) in the current snapshot and writes
``<pxe_root>/pxelinux.cfg/<board>`` pointing at that winner's kernel and
initrd (the content-addressed files themselves, so a later import cannot
change a board's boot half-way). The release comes from the ``reimage``
event (``{"release": "trusty"}``, kept in the board's vars) or the board's
``release`` attribute.

Every value written into the file is refused if it holds a control character
(a newline would add ``DEFAULT`` or ``LABEL`` lines of the mirror's choosing).
Imports refuse such values already; this is the last line of defence, for a
snapshot written before they did.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.bootres.store import Storage
from corral.bootres.streams import MAX_CMDLINE, has_control_character, read_cmdline
from corral.inventory import BOARD_NAME_RE
from corral.operations.base import OperationContext, OperationFailed


class BootResourcePxe:
    """A ``PxeWriter`` backed by the boot resource store."""

    def __init__(self, storage: Path, pxe_root: Path) -> None:
        self.storage = Storage(storage)
        self.pxe_root = pxe_root

    def write(self, ctx: OperationContext) -> Mapping[str, Any]:
        if not BOARD_NAME_RE.fullmatch(ctx.name):
            raise OperationFailed(f"board name {ctx.name!r} cannot name a PXE configuration "
                                  "file (letters, digits, '.', '_' and '-')")
        arch = ctx.attrs.get("arch")
        subarch = ctx.attrs.get("subarch", "generic")
        release = ctx.vars.get("release") or ctx.attrs.get("release")
        if not (isinstance(arch, str) and isinstance(subarch, str)
                and isinstance(release, str) and arch and subarch and release):
            raise OperationFailed(f"board {ctx.name} needs arch, subarch and a release "
                                  f"(reimage with {{\"release\": ...}}); has "
                                  f"{arch}/{subarch}/{release}")
        triple = (arch, subarch, release)
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
        objects = self.storage.objects.resolve()
        files = {}
        for leaf in winner["items"]:
            path = (control / leaf).resolve()
            if not path.is_relative_to(objects):
                raise OperationFailed(f"the current snapshot's {leaf!r} for "
                                      f"{arch}/{subarch}/{release} is not an object of "
                                      f"{self.storage.root}")
            files[leaf] = _check_one_line(leaf, str(path))
        if "boot-kernel" not in files or "boot-initrd" not in files:
            raise OperationFailed(f"the winner for {arch}/{subarch}/{release} "
                                  f"({winner['product']}) has no boot-kernel and boot-initrd")
        cmdline = ""
        if "boot-cmdline" in files:
            with open(files["boot-cmdline"], "rb") as handle:
                data = handle.read(MAX_CMDLINE + 1)
            found = read_cmdline(data)
            if found is None:
                raise OperationFailed(f"the current snapshot's boot-cmdline {data[:80]!r} "
                                      "holds a control character or is not one line of "
                                      "text; refusing to write it into a PXE configuration")
            cmdline = found
        text = "\n".join([
            f"# Written by Corral for {ctx.name}: {winner['product']} {winner['version']} "
            f"from {winner['source']}",
            "DEFAULT corral",
            "LABEL corral",
            f"  KERNEL {files['boot-kernel']}",
            f"  INITRD {files['boot-initrd']}",
            *([f"  FDT {files['boot-dtb']}"] if "boot-dtb" in files else []),
            *([f"  APPEND {cmdline}"] if cmdline else []),
            "",
        ])
        directory = self.pxe_root / "pxelinux.cfg"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / ctx.name
        partial = directory / f".{ctx.name}.tmp"
        partial.write_text(text)
        os.replace(partial, path)
        return {"path": str(path), "product": winner["product"], "version": winner["version"],
                "kernel": files["boot-kernel"], "release": release}


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
