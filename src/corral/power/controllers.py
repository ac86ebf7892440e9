"""One command at a time per power controller, across every engine process.

A PDU or a relay bank switches one outlet at a time (some take a second
command and drop it, some wedge); a BMC busy with a reset refuses the next.
Boards name their controller (``power.controller``, or the driver and
address), and an operation holds one of the controller's slots (its
``concurrency``, 1 unless the inventory says more) for as long as it talks to
it. Slots are rows of ``controller_slots``, taken and freed in their own short
transactions, so the lock lives in the database every process shares, not in
one process's memory. A holder killed mid-command leaves an expiry behind;
after it, the slot is free again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import structlog

from corral.errors import DuplicateKey
from corral.power.base import PowerUnavailable
from corral.store.port import Store

log = structlog.get_logger("corral.power")

# How often a waiting operation looks again (jittered, so that waiters of
# several processes do not ask in step).
POLL_SECONDS = 0.05


class ControllerSlots:
    def __init__(self, store: Store, clock: Callable[[], datetime], *,
                 wait_seconds: float = 60.0) -> None:
        self.store = store
        self.clock = clock
        # A waiter gives up after this long (a transient error: the outbox
        # tries again later); the state's own timeout is the outer bound.
        self.wait_seconds = wait_seconds

    @contextmanager
    def hold(self, controller: str, *, slots: int, holder: str, seconds: float
             ) -> Iterator[int]:
        """Hold one of ``controller``'s ``slots`` for at most ``seconds``.

        Raises:
            PowerUnavailable: every slot stayed taken for ``wait_seconds``.
        """
        self._ensure(controller, slots)
        deadline = time.monotonic() + self.wait_seconds
        slot = self._take(controller, slots, holder, seconds)
        while slot is None:
            if time.monotonic() > deadline:
                raise PowerUnavailable(f"controller {controller} stayed busy with other "
                                       f"boards' commands for {self.wait_seconds:g} s")
            time.sleep(POLL_SECONDS * (1 + random.random()))
            slot = self._take(controller, slots, holder, seconds)
        try:
            yield slot
        finally:
            try:
                with self.store.unit() as tx:
                    tx.controllers.free(controller, slot, holder)
            except Exception as exc:  # the expiry frees it; the result stands
                log.warning("controller_slot_not_freed", controller=controller,
                            error=str(exc)[:200])

    def _take(self, controller: str, slots: int, holder: str, seconds: float) -> int | None:
        with self.store.unit() as tx:
            now = self.clock()
            until = now + timedelta(seconds=seconds)
            for slot in range(slots):
                if tx.controllers.take(controller, slot, holder=holder, now=now,
                                           until=until):
                    return slot
        return None

    def _ensure(self, controller: str, slots: int) -> None:
        with self.store.unit() as tx:
            have = tx.controllers.slot_count(controller)
        if have >= slots:
            return
        try:
            with self.store.unit() as tx:
                tx.controllers.add_slots(controller, have, slots)
        except DuplicateKey:
            pass  # another process added them at the same moment
