"""What operators read: a machine, a page of machines, a history, and how
each is shown.

:class:`Reads` works on anything with a store transaction's read methods
(:class:`MachineSource`): the engine gives it the store's units, a command
that only looks gives it a :class:`corral.store.reader.Reader`, which reads
on the bare driver and so starts several times faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from corral.errors import UnknownMachine
from corral.machines import MachineSet
from corral.payload import readable, readable_text
from corral.power.settings import hide_secrets
from corral.store.values import HistoryEntry, MachineRow


class MachineReads(Protocol):
    def get(self, kind: str, name: str) -> MachineRow | None: ...
    def list(self, kind: str, *, states: Sequence[str] | None = None,
             after: str | None = None, limit: int | None = None) -> list[MachineRow]: ...


class HistoryReads(Protocol):
    def list(self, machine_id: int, *, limit: int = 100,
             before_id: int | None = None) -> list[HistoryEntry]: ...


class MachineSource(Protocol):
    """What a read needs: a store transaction's ``machines`` and ``history``
    repositories, or the bare-driver reader's."""

    @property
    def machines(self) -> MachineReads: ...
    @property
    def history(self) -> HistoryReads: ...


class Reads:
    """Reads through ``source`` (a context manager factory: one transaction
    or session per read), shown by ``machines``' definitions."""

    def __init__(self, machines: MachineSet,
                 source: Callable[[], AbstractContextManager[MachineSource]]) -> None:
        self.machines = machines
        self.source = source
        # (kind, state, role) -> what describe shows of that state.
        self._state_docs: dict[tuple[str, str, str], Any] = {}

    def get(self, kind: str, name: str) -> MachineRow:
        """Raises: UnknownMachine."""
        self.machines[kind]
        with self.source() as tx:
            row = tx.machines.get(kind, name)
        if row is None:
            raise UnknownMachine(kind, name)
        return row

    def list_machines(
        self, kind: str, *, states: list[str] | None = None, failed: bool = False,
        after: str | None = None, limit: int | None = None,
    ) -> list[MachineRow]:
        """Machines of ``kind`` by name, optionally only in ``states`` and/or
        failed ones; with ``limit``, the page of names after ``after`` (the
        last name of the previous page), so a fleet of any size is read in
        pages that each cost the same.

        Raises:
            NotFound: a state the kind's machine does not have.
        """
        machine = self.machines[kind]
        for state in states or ():
            machine.state(state)
        wanted = states or None
        if failed:
            wanted = [s for s in (wanted or machine.definition.failed_states)
                      if machine.is_failed(s)]
        with self.source() as tx:
            return tx.machines.list(kind, states=wanted, after=after, limit=limit)

    def history(
        self, kind: str, name: str, *, limit: int = 100, before_id: int | None = None
    ) -> list[HistoryEntry]:
        """The newest ``limit`` entries, newest first, older than ``before_id``.

        Payloads and reasons come back readable whatever was stored (see
        :func:`corral.payload.readable`): one bad row never fails a page.
        """
        row = self.get(kind, name)
        with self.source() as tx:
            entries = tx.history.list(row.id, limit=limit, before_id=before_id)
        return [replace(e, payload=readable(e.payload), reason=readable_text(e.reason))
                for e in entries]

    def describe(self, row: MachineRow, role: str = "admin") -> dict[str, Any]:
        """A machine as ``role`` sees it: its row, whether it has failed, the
        events its state accepts with who fires each, and those ``role`` may
        fire (the CLI and the HTTP API both show this)."""
        failed, allowed, accepted = self._state_doc(row.kind, row.state, role)
        return {"name": row.name, "state": row.state, "failed": failed,
                "state_entered_at": row.state_entered_at, "deadline": row.deadline,
                "counters": row.counters, "epoch": row.epoch,
                "attrs": hide_secrets(readable(row.attrs)),
                "vars": readable(row.vars or {}),
                "allowed_events": list(allowed),
                "accepted_events": {event: list(by) for event, by in accepted.items()}}

    def _state_doc(self, kind: str, state: str, role: str
                   ) -> tuple[bool, tuple[str, ...], dict[str, tuple[str, ...]]]:
        """What a state says about every machine in it (the definitions do not
        change while the engine runs): computed once per kind, state and role,
        so that a page of a thousand machines is not a thousand computations."""
        key = (kind, state, role)
        found = self._state_docs.get(key)
        if found is None:
            machine = self.machines[kind]
            found = self._state_docs[key] = (
                machine.is_failed(state), tuple(machine.allowed_events(state, role)),
                {event: tuple(machine.firers(state, event))
                 for event in machine.allowed_events(state)})
        return found
