"""``corral bootres import``: read every source, choose the winners, pull and
verify them, publish a snapshot atomically, record it in the database.

Any failure — an unreachable source, a bad signature, a size or checksum
mismatch, a mirror naming what it may not, a full disk — stops the import
with the reason: nothing is published, no other candidate is tried in the
failed one's place, the previous snapshot stays current, and the import's
``bootres_imports`` row says ``failed`` with that reason.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from corral.bootres.config import ImportConfig
from corral.bootres.select import Winner, choose
from corral.bootres.store import Storage
from corral.bootres.streams import (
    MAX_CMDLINE,
    Candidate,
    Fetcher,
    ImportFailed,
    Item,
    join,
    read_cmdline,
    read_source,
)
from corral.store.port import Store


@dataclass(frozen=True, kw_only=True)
class ImportResult:
    snapshot: str
    winners: list[Winner]
    objects: int
    downloaded: int


Progress = Callable[[str, int, int], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_import(config: ImportConfig, db: Store | None = None, *,
               progress: Progress | None = None, fetcher: Fetcher | None = None
               ) -> ImportResult:
    """Import, publish and record; a failure of any kind is recorded as failed.

    Raises:
        ImportFailed: with the reason, on one line; nothing is published then. An
            unexpected error (a full disk, a bug) becomes one too, so that it is
            reported and recorded like any other.
        KeyboardInterrupt: recorded as failed ("interrupted"), then raised again.
    """
    started = _now()
    import_id = _record_start(db, config, started)
    own_fetcher = fetcher is None
    fetcher = fetcher or Fetcher()
    try:
        storage = Storage(config.storage)
        with storage.lock():
            result = _import(config, storage, fetcher, started, progress)
    except ImportFailed as exc:
        _record_end(db, import_id, status="failed", error=str(exc))
        raise
    except OSError as exc:
        failure = ImportFailed(f"{exc.filename}: {exc.strerror}" if exc.filename and
                               exc.strerror else f"{type(exc).__name__}: {exc}")
        _record_end(db, import_id, status="failed", error=str(failure))
        raise failure from exc
    except Exception as exc:
        failure = ImportFailed(f"unexpected error: {type(exc).__name__}: {exc}")
        _record_end(db, import_id, status="failed", error=str(failure))
        raise failure from exc
    except BaseException:
        _record_end(db, import_id, status="failed", error="interrupted")
        raise
    finally:
        if own_fetcher:
            fetcher.close()
    _record_end(db, import_id, status="published", snapshot=result.snapshot,
                winners=result.winners)
    return result


def _import(config: ImportConfig, storage: Storage, fetcher: Fetcher, started: str,
            progress: Progress | None) -> ImportResult:
    storage.prepare()
    candidates: list[Candidate] = []
    for index, source in enumerate(config.sources):
        candidates.extend(read_source(fetcher, index, source.url, source.keyring,
                                      allow_md5=source.allow_md5,
                                      max_item_size=config.max_item_size))
    winners = choose(candidates, [s.mask for s in config.sources], config.sorting)
    if not winners:
        raise ImportFailed("no source offers anything the masks admit; nothing to publish")
    # Each distinct file is pulled once, however many winners share it.
    wanted: dict[str, tuple[Item, str]] = {}
    for winner in winners:
        for item in winner.candidate.items:
            location = join(winner.candidate.mirror_root, item.path)
            wanted.setdefault(location, (item, winner.candidate.mirror_root))
    total = sum(item.size for item, _ in wanted.values())
    done = 0
    digests: dict[str, str] = {}
    downloaded = 0
    for location, (item, root) in sorted(wanted.items()):
        known = item.checksums.get("sha256")
        if known and storage.has(known):
            if storage.size_of(known) != item.size:
                raise ImportFailed(f"{location}: declares {item.size} bytes, but the stored "
                                   f"object with its sha256 has {storage.size_of(known)}")
            digests[location] = known
            done += item.size
            if progress:
                progress(location, done, total)
            continue

        def advance(n: int, where: str = location) -> None:
            nonlocal done
            done += n
            if progress:
                progress(where, done, total)

        with closing(fetcher.stream(location, root=root, limit=item.size)) as chunks:
            digests[location] = storage.store(item, chunks, location, advance)
        downloaded += 1
    leaves: dict[tuple[str, str, str, str], str] = {}
    manifest_winners = []
    for winner in winners:
        c = winner.candidate
        files = {}
        for item in c.items:
            location = join(c.mirror_root, item.path)
            digest = digests[location]
            if item.leaf == "boot-cmdline":
                _check_cmdline(storage, digest, location)
            leaves[(winner.arch, winner.subarch, winner.release, item.leaf)] = digest
            files[item.leaf] = digest
        manifest_winners.append({"arch": winner.arch, "subarch": winner.subarch,
                                 "release": winner.release, "source": c.source_url,
                                 "product": c.product, "version": c.version, "items": files})
    snapshot = storage.publish(leaves, {"started_at": started, "winners": manifest_winners})
    return ImportResult(snapshot=snapshot, winners=winners, objects=len(set(digests.values())),
                        downloaded=downloaded)


def _check_cmdline(storage: Storage, digest: str, location: str) -> None:
    """A command line goes into a board's PXE configuration: one line, or nothing.

    Raises:
        ImportFailed: it is not one line of printable text.
    """
    with storage.object(digest).open("rb") as handle:
        data = handle.read(MAX_CMDLINE + 1)
    if read_cmdline(data) is None:
        raise ImportFailed(f"{location}: a boot-cmdline must be one line of printable text "
                           f"(UTF-8, at most {MAX_CMDLINE} bytes, no control characters but "
                           "a final newline)")


def _record_start(db: Store | None, config: ImportConfig, started: str) -> int | None:
    if db is None:
        return None
    with db.unit() as tx:
        return tx.bootres.start_import(started_at=datetime.fromisoformat(started),
                                       storage=str(config.storage),
                                       sources=[s.url for s in config.sources])


def _record_end(db: Store | None, import_id: int | None, *, status: str,
                snapshot: str | None = None, error: str | None = None,
                winners: list[Winner] | None = None) -> None:
    if db is None or import_id is None:
        return
    rows = [{"arch": w.arch, "subarch": w.subarch, "release": w.release,
             "source": w.candidate.source_url, "product": w.candidate.product,
             "version": w.candidate.version}
            for w in winners or ()]
    with db.unit() as tx:
        tx.bootres.end_import(import_id, status=status, snapshot=snapshot, error=error,
                              now=datetime.now(UTC), published=rows)


def list_imports(db: Store, limit: int = 20) -> list[dict[str, Any]]:
    with db.unit() as tx:
        return tx.bootres.imports(limit)


def progress_bar() -> tuple[Progress | None, Callable[[], None]]:
    """A rich progress bar on a terminal (stderr), else nothing."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("importing", total=None)
    bar.start()

    def update_bar(where: str, done: int, total: int) -> None:
        bar.update(task, completed=done, total=total or None,
                   description=where.rsplit("/", 1)[-1][:40])

    return update_bar, bar.stop
