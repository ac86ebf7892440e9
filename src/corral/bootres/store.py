"""Content-addressed objects and atomically published snapshots.

```
<storage>/objects/<sha256>                   every file, stored once by content
<storage>/snapshots/<id>/manifest.json       what the snapshot publishes
<storage>/snapshots/<id>/control/<arch>/<subarch>/<release>/<ftype> -> objects/<sha256>
<storage>/current -> snapshots/<id>           swapped in one rename
```

A download is written under a temporary name, checked against its size and
strongest checksum while it streams, and renamed into ``objects/`` only when
both match. A snapshot is built beside the current one and published by
renaming a new ``current`` symlink over the old one, so a reader sees the old
tree or the new one, never a mix; a failed import removes its snapshot and
leaves ``current`` alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from corral.bootres.streams import ImportFailed, Item

STRENGTH = ("sha512", "sha256", "md5")


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.snapshots = root / "snapshots"
        self.tmp = root / "tmp"
        self.current = root / "current"

    def prepare(self) -> None:
        for directory in (self.objects, self.snapshots, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)

    def has(self, sha256: str) -> bool:
        return (self.objects / sha256).is_file()

    def store(self, item: Item, chunks: Iterable[bytes], location: str,
              progress: Callable[[int], None] = lambda n: None) -> str:
        """Write a download, verify it, and keep it by content; returns its sha256.

        Raises:
            ImportFailed: the size or the checksum does not match (nothing kept).
        """
        algorithm = next((a for a in STRENGTH if a in item.checksums), None)
        if algorithm is None:
            raise ImportFailed(f"{location}: no checksum (sha512, sha256 or md5) to verify")
        expected = item.checksums[algorithm].lower()
        check = hashlib.new(algorithm)
        content = hashlib.sha256()
        size = 0
        partial = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with partial.open("wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if item.size is not None and size > item.size:
                        raise ImportFailed(f"{location}: larger than its size {item.size}")
                    check.update(chunk)
                    content.update(chunk)
                    out.write(chunk)
                    progress(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if item.size is not None and size != item.size:
                raise ImportFailed(f"{location}: {size} bytes, expected {item.size}")
            if check.hexdigest() != expected:
                raise ImportFailed(f"{location}: {algorithm} mismatch (expected {expected}, "
                                   f"got {check.hexdigest()})")
            digest = content.hexdigest()
            os.replace(partial, self.objects / digest)
            return digest
        finally:
            partial.unlink(missing_ok=True)

    def publish(self, leaves: dict[tuple[str, str, str, str], str],
                manifest: dict[str, Any]) -> str:
        """Build a snapshot of ``(arch, subarch, release, leaf) -> sha256`` and make it
        current; returns its id."""
        snapshot_id = f"{manifest['started_at'].replace(':', '').replace('-', '')}-" \
                      f"{uuid.uuid4().hex[:8]}"
        building = self.snapshots / f".{snapshot_id}.building"
        try:
            for (arch, subarch, release, leaf), digest in sorted(leaves.items()):
                directory = building / "control" / arch / subarch / release
                directory.mkdir(parents=True, exist_ok=True)
                target = os.path.relpath(self.objects / digest, directory)
                (directory / leaf).symlink_to(target)
            (building / "manifest.json").write_text(json.dumps(manifest, indent=2,
                                                               sort_keys=True))
            final = self.snapshots / snapshot_id
            os.replace(building, final)
            swap = self.root / f".current-{snapshot_id}"
            swap.symlink_to(os.path.relpath(final, self.root))
            os.replace(swap, self.current)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return snapshot_id

    def current_manifest(self) -> dict[str, Any] | None:
        manifest = self.current / "manifest.json"
        if not manifest.is_file():
            return None
        loaded: dict[str, Any] = json.loads(manifest.read_text())
        return loaded

    def leaves(self) -> Iterator[Path]:
        control = self.current / "control"
        if control.is_dir():
            yield from sorted(p for p in control.rglob("*") if p.is_symlink())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
