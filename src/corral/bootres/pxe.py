"""Writing a board's PXE configuration from the published boot resources.

The ``write_pxe_config`` operation of a reimage looks up the winner for the
board's (arch, subarch, release) in the current snapshot and writes
``<pxe_root>/pxelinux.cfg/<board>`` pointing at that winner's kernel and
initrd (the content-addressed files themselves, so a later import cannot
change a board's boot half-way). The release comes from the ``reimage``
event (``{"release": "trusty"}``, kept in the board's vars) or the board's
``release`` attribute.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.bootres.store import Storage
from corral.operations.base import OperationContext, OperationFailed


class BootResourcePxe:
    """A ``PxeWriter`` backed by the boot resource store."""

    def __init__(self, storage: Path, pxe_root: Path) -> None:
        self.storage = Storage(storage)
        self.pxe_root = pxe_root

    def write(self, ctx: OperationContext) -> Mapping[str, Any]:
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
        control = self.storage.current / "control" / arch / subarch / release
        files = {leaf: str((control / leaf).resolve()) for leaf in winner["items"]}
        if "boot-kernel" not in files or "boot-initrd" not in files:
            raise OperationFailed(f"the winner for {arch}/{subarch}/{release} "
                                  f"({winner['product']}) has no boot-kernel and boot-initrd")
        cmdline = ""
        if "boot-cmdline" in files:
            cmdline = Path(files["boot-cmdline"]).read_text().strip()
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
