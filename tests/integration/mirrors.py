"""Small simplestreams mirrors that the boot resource tests generate."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any


def checksums(content: bytes) -> dict[str, Any]:
    return {"size": len(content), "md5": hashlib.md5(content).hexdigest(),
            "sha256": hashlib.sha256(content).hexdigest()}


class Mirror:
    """A mirror root with one products:1.0 file listed in streams/v1/index.json.

    ``product()`` takes its attributes per level, so tests can put each one
    where they want it to be inherited from.
    """

    def __init__(self, root: Path, *, content_id: str = "com.example:images",
                 top: dict[str, Any] | None = None) -> None:
        self.root = root
        self.content_id = content_id
        self.top = top or {}
        self.products: dict[str, Any] = {}
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return self.root.as_uri() + "/"

    def item(self, path: str, content: bytes, *, ftype: str | None = None,
             **extra: Any) -> dict[str, Any]:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        item = {"path": path, **checksums(content), **extra}
        if ftype is not None:
            item["ftype"] = ftype
        return item

    def boot_items(self, prefix: str, tag: str) -> dict[str, Any]:
        return {"boot-kernel": self.item(f"{prefix}/kernel", f"kernel {tag}".encode(),
                                         ftype="boot-kernel"),
                "boot-initrd": self.item(f"{prefix}/initrd", f"initrd {tag}".encode(),
                                         ftype="boot-initrd")}

    def product(self, name: str, versions: dict[str, dict[str, Any]], **attrs: Any) -> None:
        """``versions``: version -> {"items": {...}, other version attributes}."""
        self.products[name] = {**attrs, "versions": versions}

    def write(self, *, signer: Signer | None = None) -> None:
        products_path = f"streams/v1/{self.content_id}.json"
        doc = {"format": "products:1.0", "content_id": self.content_id, **self.top,
               "products": self.products}
        index = {"format": "index:1.0", "index": {self.content_id: {
            "path": products_path, "format": "products:1.0",
            "products": sorted(self.products)}}}
        streams = self.root / "streams" / "v1"
        streams.mkdir(parents=True, exist_ok=True)
        (self.root / products_path).write_text(json.dumps(doc, indent=1))
        (streams / "index.json").write_text(json.dumps(index, indent=1))
        if signer is not None:
            signer.sign(self.root / products_path)
            signer.sign(streams / "index.json")


class Signer:
    """A throwaway GnuPG key; ``keyring`` is what a source's keyring points at."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True)
        self._gpg("--quick-gen-key", "Corral Test <test@example.com>", "ed25519", "sign",
                  "never")
        self.keyring = home.parent / "trusted.gpg"
        self.keyring.write_bytes(self._gpg("--export", capture=True))

    def _gpg(self, *args: str, capture: bool = False) -> bytes:
        gpg = shutil.which("gpg")
        assert gpg, "gpg is needed for the signed-source tests"
        result = subprocess.run([gpg, "--homedir", str(self.home), "--batch", "--yes",
                                 "--pinentry-mode", "loopback", "--passphrase", "", *args],
                                capture_output=True, check=True, timeout=120)
        return result.stdout if capture else b""

    def sign(self, path: Path) -> Path:
        signed = path.with_suffix(".sjson")
        self._gpg("--clearsign", "--output", str(signed), str(path))
        return signed
