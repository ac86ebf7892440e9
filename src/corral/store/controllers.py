"""Power controller slots: how many commands one controller (a BMC, a PDU)
takes at once, shared by every engine process. A slot is taken and freed in
its own short transaction, with an expiry for a killed holder."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, or_, select, update

from corral.store.repository import Repository
from corral.store.schema import controller_slots

_slot = controller_slots.c


class Controllers(Repository):
    """The ``controller_slots`` table."""

    def slot_count(self, controller: str) -> int:
        return int(self.conn.execute(select(func.count()).select_from(controller_slots)
                                     .where(_slot.controller == controller)).scalar_one())

    def add_slots(self, controller: str, first: int, last: int) -> None:
        """Create free slots ``first`` to ``last - 1``.

        Raises: DuplicateKey when another process created them first."""
        self.conn.execute(insert(controller_slots), [
            {"controller": controller, "slot": slot, "holder": None, "expires_at": None}
            for slot in range(first, last)])

    def take(self, controller: str, slot: int, *, holder: str, now: datetime,
             until: datetime) -> bool:
        """Take one slot if it is free or its holder's time is up. Two takers
        of one slot serialize on its row: the second re-reads it after the
        first commits and finds it held."""
        result = self.conn.execute(
            update(controller_slots)
            .where(_slot.controller == controller, _slot.slot == slot,
                   or_(_slot.holder.is_(None), _slot.expires_at < now))
            .values(holder=holder, expires_at=until))
        return int(result.rowcount) == 1

    def free(self, controller: str, slot: int, holder: str) -> None:
        self.conn.execute(update(controller_slots)
                          .where(_slot.controller == controller, _slot.slot == slot,
                                 _slot.holder == holder)
                          .values(holder=None, expires_at=None))
