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

One import at a time holds ``<storage>/import.lock``; it starts by removing
what an interrupted import left (``tmp/*.part``, half-built snapshots, an
unrenamed ``current`` symlink). Every path this module creates is checked to
stay under the storage root: the names in it were checked when the mirror was
read, and are checked again here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corral.bootres.streams import ImportFailed, Item, check_name
from corral.names import SHA256_HEX

STRENGTH = ("sha512", "sha256", "md5")
SHA256 = SHA256_HEX.regex


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.snapshots = root / "snapshots"
        self.tmp = root / "tmp"
        self.current = root / "current"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the storage for one import.

        Raises:
            ImportFailed: the storage is not a directory, or another import holds it.
        """
        if self.root.exists() and not self.root.is_dir():
            raise ImportFailed(f"storage {self.root} is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "import.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ImportFailed(f"another import is running in {self.root}") from None
            yield
        finally:
            os.close(fd)

    def prepare(self) -> None:
        """Create the directories and remove an interrupted import's leftovers (call it
        under :meth:`lock`)."""
        for directory in (self.objects, self.snapshots, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        for partial in self.tmp.glob("*.part"):
            partial.unlink(missing_ok=True)
        for building in self.snapshots.glob(".*.building"):
            shutil.rmtree(building, ignore_errors=True)
        for swap in self.root.glob(".current-*"):
            swap.unlink(missing_ok=True)

    def object(self, sha256: str) -> Path:
        """Where the object with this sha256 is (or would be) stored.

        Raises:
            ImportFailed: ``sha256`` is not 64 lower-case hex digits.
        """
        if not SHA256.fullmatch(sha256):
            raise ImportFailed(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
        return self.objects / sha256

    def has(self, sha256: str) -> bool:
        path = self.object(sha256)
        return path.is_file() and not path.is_symlink()

    def size_of(self, sha256: str) -> int:
        return self.object(sha256).stat().st_size

    def store(self, item: Item, chunks: Iterable[bytes], location: str,
              progress: Callable[[int], None] = lambda n: None) -> str:
        """Write a download, verify it, and keep it by content; returns its sha256.

        ``chunks`` must stop soon after ``item.size`` bytes (the fetcher's
        ``limit``): reading stops at the first byte past the declared size.

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
                    if size > item.size:
                        raise ImportFailed(f"{location}: larger than its size {item.size}")
                    check.update(chunk)
                    content.update(chunk)
                    out.write(chunk)
                    progress(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if size != item.size:
                raise ImportFailed(f"{location}: {size} bytes, expected {item.size}")
            if check.hexdigest() != expected:
                raise ImportFailed(f"{location}: {algorithm} mismatch (expected {expected}, "
                                   f"got {check.hexdigest()})")
            digest = content.hexdigest()
            os.replace(partial, self.object(digest))
            return digest
        finally:
            partial.unlink(missing_ok=True)

    def publish(self, leaves: dict[tuple[str, str, str, str], str],
                manifest: dict[str, Any]) -> str:
        """Build a snapshot of ``(arch, subarch, release, leaf) -> sha256`` and make it
        current; returns its id.

        Raises:
            ImportFailed: a name that is not one path component, or a digest that is
                not a sha256 (the mirror's names were checked before; this is the
                last check before they become paths).
        """
        snapshot_id = f"{manifest['started_at'].replace(':', '').replace('-', '')}-" \
                      f"{uuid.uuid4().hex[:8]}"
        building = self.snapshots / f".{snapshot_id}.building"
        for (arch, subarch, release, leaf), digest in leaves.items():
            for kind, name in (("arch", arch), ("subarch", subarch), ("release", release),
                               ("ftype", leaf)):
                check_name(kind, name, "publishing")
            self.object(digest)
        try:
            for (arch, subarch, release, leaf), digest in sorted(leaves.items()):
                directory = building / "control" / arch / subarch / release
                directory.mkdir(parents=True, exist_ok=True)
                target = os.path.relpath(self.object(digest), directory)
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
