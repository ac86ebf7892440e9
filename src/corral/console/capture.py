"""The capture service: inside every ``corral serve`` worker, it reads the
serial consoles of the boards it has claimed and stores their output per
boot attempt.

Many engine processes may share one database; each board's console is read
by exactly one of them. Every pass (``console_interval``) a process renews
its claims and takes boards nobody holds, or whose holder stopped renewing
for ``console_lease`` seconds (a claim row with an owner and an expiry,
taken with ``FOR UPDATE SKIP LOCKED`` like webhooks' leases), and lets go of
the boards it lost. Each claimed board has a reader thread.

An attempt begins when the board enters one of ``console_boot_states`` (a
power cycle: ``power_cycling``, ``pxe_power_cycling``): its history row marks
it. The pass looks for new boots of every claimed board, and so does each
write, so that output after a power cycle lands in the new attempt even
before the next pass. Text is redacted (:mod:`corral.console.redact`) before
it is stored, a line at a time, and each board keeps at most its
``max_bytes`` (oldest attempts dropped first).
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from corral.console.redact import Redactor
from corral.console.settings import console_of
from corral.console.sources import ConsoleSource, SourceClosed, SourceUnavailable, open_source
from corral.machines.needs import Needs
from corral.power.base import PowerFailed
from corral.power.settings import SECRET_NAMES, secret_reader
from corral.store.port import Store
from corral.store.values import MAX_CONSOLE_CHUNK as MAX_CHUNK_CHARS

log = structlog.get_logger("corral.console")

CLAIMS_LOCK = "corral_console_claims"
# The board states whose entry begins a boot attempt (docs/console-capture.md).
BOOT_STATES = ("power_cycling", "pxe_power_cycling", "checking")
# A line without its end (a login prompt) is stored after this much quiet.
PROMPT_SECONDS = 0.5
# Seconds before a console that could not be opened, or that closed, is
# opened again: a console server that restarts is back within a few seconds,
# and a BMC refusing SOL sessions should not be asked many times a second.
REOPEN_SECONDS = 5.0
READ_SECONDS = 0.25


def needs(boot_states: Sequence[str]) -> Needs:
    """The board states the capture relies on (held against board.yaml)."""
    return Needs(service="console capture", kind="board", states=tuple(boot_states))


@dataclass(frozen=True, kw_only=True)
class CaptureSettings:
    max_bytes: int = 1 << 20
    lease: float = 30.0
    max_boards: int = 200
    boot_states: tuple[str, ...] = BOOT_STATES
    # Simulated boards whose relay is dead (sim_dead_boards): they never boot,
    # so their simulated console stays silent.
    sim_dead_boards: frozenset[str] = frozenset()


class ConsoleCapture:
    """Claims boards' consoles and runs a reader per claimed board."""

    def __init__(self, store: Store, clock: Callable[[], datetime], *, owner: str,
                 settings: CaptureSettings, kind: str = "board",
                 sources: Callable[..., ConsoleSource] = open_source,
                 reopen_seconds: float = REOPEN_SECONDS) -> None:
        self.store, self.clock, self.owner, self.settings = store, clock, owner, settings
        self.kind, self.sources, self.reopen_seconds = kind, sources, reopen_seconds
        self.readers: dict[str, _Reader] = {}

    def run_pass(self) -> list[str]:
        """Renew and take claims, start and stop readers, begin attempts for
        new boots. Returns the boards this process captures."""
        now = self.clock()
        with self.store.unit() as tx:
            rows = tx.machines.list(self.kind)
        consoles = {r.name: (c, r.attrs) for r in rows if (c := console_of(r.attrs))}
        with self.store.unit() as tx:
            tx.lock_named(CLAIMS_LOCK)
            tx.consoles.sync_claims(sorted(consoles))
        with self.store.unit() as tx:
            held = tx.consoles.claim(owner=self.owner, now=now,
                                     until=now + timedelta(seconds=self.settings.lease),
                                     limit=self.settings.max_boards)
        for board in sorted(set(self.readers) - set(held)):
            self.readers.pop(board).stop()
            log.info("console_capture_stopped", board=board, reason="claim lost")
        for board in held:
            console, attrs = consoles[board]
            reader = self.readers.get(board)
            if reader is not None and reader.console != console:
                reader.stop()
                reader = None
            if reader is None:
                reader = _Reader(self, board, console, attrs)
                self.readers[board] = reader
                reader.start()
            reader.check_boots()
        return held

    def shutdown(self) -> None:
        """Stop every reader and give the claims back."""
        for reader in self.readers.values():
            reader.stop()
        self.readers.clear()
        with self.store.unit() as tx:
            tx.consoles.release(owner=self.owner)


def source_settings(console: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A console's settings, an ``ipmi`` console without an address taking
    the board's IPMI BMC and credentials from its ``power:``."""
    settings = dict(console)
    power = attrs.get("power")
    if settings["type"] == "ipmi" and not settings.get("address") and isinstance(power, dict):
        for key in ("address", "port", "username", "cipher_suite", "password",
                    "password_file", "password_env"):
            if power.get(key) is not None:
                settings.setdefault(key, power[key])
    return settings


def _secrets(board: str, settings: Mapping[str, Any], attrs: Mapping[str, Any]) -> list[str]:
    """The board's secrets that its console might print (and must not keep)."""
    found = []
    power = attrs.get("power")
    for where in (settings, power if isinstance(power, dict) else {}):
        read = secret_reader(board, where)
        for name in SECRET_NAMES:
            try:
                value = read(name)
            except PowerFailed:
                value = None
            if value:
                found.append(value)
    return found


class _Reader:
    """One board's console: a thread reading its source into the store."""

    def __init__(self, capture: ConsoleCapture, board: str, console: dict[str, Any],
                 attrs: Mapping[str, Any]) -> None:
        self.capture, self.board, self.console = capture, board, console
        self.settings = source_settings(console, attrs)
        if self.settings["type"] == "simulated":
            self.settings["dead"] = board in capture.settings.sim_dead_boards
        self.max_bytes = int(console.get("max_bytes") or capture.settings.max_bytes)
        self.redact = Redactor(_secrets(board, self.settings, attrs))
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.attempt: dict[str, Any] | None = None
        self.last_boot = 0
        self.source: ConsoleSource | None = None
        self.thread = threading.Thread(target=self._run, name=f"corral-console-{board}",
                                       daemon=True)

    # -- attempts
    def start(self) -> None:
        with self.capture.store.unit() as tx:
            self.attempt = tx.consoles.attempt(self.board)
            if self.attempt is not None:
                self.last_boot = int(self.attempt["history_id"] or 0)
            else:
                boots = tx.consoles.boots_after(kind=self.capture.kind, board=self.board,
                                                states=self.capture.settings.boot_states,
                                                after_id=0)
                self.last_boot = boots[-1][0] if boots else 0
        self.thread.start()
        log.info("console_capture_started", board=self.board, source=self.settings["type"])

    def check_boots(self, tx: Any = None) -> None:
        """Begin an attempt for each boot since the last one seen."""
        if tx is None:
            with self.lock, self.capture.store.unit() as unit:
                self._begin_boots(unit)
        else:
            self._begin_boots(tx)

    def _begin_boots(self, tx: Any) -> None:
        boots = tx.consoles.boots_after(kind=self.capture.kind, board=self.board,
                                        states=self.capture.settings.boot_states,
                                        after_id=self.last_boot)
        for history_id, _at in boots:
            self.attempt = tx.consoles.begin(board=self.board, history_id=history_id,
                                             now=self.capture.clock())
            self.last_boot = history_id
            started = getattr(self.source, "boot_started", None)
            if started is not None:
                started(self.attempt["attempt"])
            log.info("console_attempt_started", board=self.board,
                     attempt=self.attempt["attempt"], history_id=history_id)

    def write(self, text: str) -> None:
        """Store redacted text in the board's current attempt."""
        text = self.redact(text).replace("\x00", "")
        if not text:
            return
        with self.lock, self.capture.store.unit() as tx:
            self._begin_boots(tx)
            now = self.capture.clock()
            if self.attempt is None:
                self.attempt = tx.consoles.begin(board=self.board,
                                                 history_id=self.last_boot or None, now=now)
            for start in range(0, len(text), MAX_CHUNK_CHARS):
                self.attempt = tx.consoles.append(self.attempt,
                                                  text[start:start + MAX_CHUNK_CHARS], now)
            if int(self.attempt["bytes"]) > 0:
                tx.consoles.bounded(self.board, self.max_bytes)

    # -- the thread
    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def _run(self) -> None:
        complained: str | None = None
        while not self.stopping.is_set():
            source = self.capture.sources(self.board, self.settings,
                                          secret_reader(self.board, self.settings))
            try:
                source.open()
            except (SourceUnavailable, PowerFailed) as exc:  # PowerFailed: a secret unread
                if str(exc) != complained:
                    log.warning("console_unavailable", board=self.board, error=str(exc))
                    complained = str(exc)
                self.stopping.wait(self.capture.reopen_seconds)
                continue
            complained = None
            self.source = source
            try:
                self._pump(source)
            except SourceClosed as exc:
                log.info("console_closed", board=self.board, error=str(exc))
                self.stopping.wait(self.capture.reopen_seconds)
            except Exception as exc:  # a reader never dies: it logs and starts again
                log.error("console_reader_failed", board=self.board, error=str(exc))
                self.stopping.wait(self.capture.reopen_seconds)
            finally:
                self.source = None
                source.close()

    def _pump(self, source: ConsoleSource) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        quiet_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                data = source.read(READ_SECONDS)
                if data:
                    pending += decoder.decode(data)
                    quiet_since = time.monotonic()
                cut = pending.rfind("\n") + 1
                if pending and (time.monotonic() - quiet_since >= PROMPT_SECONDS
                                or len(pending) >= MAX_CHUNK_CHARS):
                    cut = len(pending)
                if cut:
                    pending = self._store(pending, cut)
        finally:
            pending += decoder.decode(b"", final=True)
            if pending:
                self._store(pending, len(pending))

    def _store(self, pending: str, cut: int) -> str:
        """Write ``pending[:cut]``; what could not be written stays pending."""
        try:
            self.write(pending[:cut])
        except Exception as exc:  # the database is away: keep the text and retry
            log.warning("console_write_failed", board=self.board, error=str(exc))
            self.stopping.wait(1.0)
            # Never hold more than a board's bound in memory.
            return pending[-self.max_bytes:]
        return pending[cut:]
