"""The lease scheduler's pass: give boards to queued leases in their fair
order, prepare and hold them, and send the boards of ended leases home
(docs/leases.md).

One pass is one short engine transaction under the database lock
``corral-leases``, so any number of engine processes may run it and only one
does at a time. It reads every open lease, the holds and the ready boards,
and then, level-triggered (what is, not what happened, so that a pass
missed or killed is made up by the next one):

1. an ended lease (``returning``, or any lease that still holds boards and
   should not) lets go of its boards: each is switched off and reimaged to
   the lab's baseline (or power cycled), and once every board is back the
   lease takes its final state;
2. a preparing lease whose boards are all back in ``ready`` (reimaged) holds
   them in ``leased`` and becomes active; one whose board failed fails;
3. an active lease's board that came back to ``ready`` (after its holder's
   reboot or reimage) is held again, and a lease close to its expiry says so;
4. queued leases, ranked by priority, then fair share, then age, take all
   the boards they ask for at once or none; one that has waited long keeps
   the free boards it could use from those ranked below it (allocating),
   for a bounded time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from corral.config import Settings
from corral.engine.core import Engine, Transaction
from corral.errors import Unavailable
from corral.leases import selector as selectors
from corral.leases.model import BOARD, ENDED, KIND, WAITING, iso
from corral.names import Role
from corral.store.values import MachineRow

log = structlog.get_logger("corral.leases")

LOCK = "corral-leases"
# Where a board is while it goes home (the return path and the paths it
# may be on when its lease ends); anywhere else, it is back.
# The return path ends in a health check: a board is back once it passed
# (ready), or failed it (never handed out again), or waits for its equipment.
RETURN_PATH = ("returning", "power_cycling", "rebooting", "pinging", "pxe_configuring",
               "pxe_boot_device", "pxe_power_cycling", "pxe_booting", "installing",
               "check_queued", "checking", "judging", "suspect")
FINAL_EVENT = {"released": "returned", "expired": "returned_expired",
               "heartbeat": "returned_expired", "revoked": "returned_revoked",
               "failed": "returned_failed"}


def how_it_ended(lease: Mapping[str, Any]) -> str:
    """Why a lease the deadline sweep ended did (its row says no more)."""
    if lease["activated_at"] is None:
        return "failed"
    expires, beat, every = lease["expires_at"], lease["heartbeat_at"], lease["heartbeat_s"]
    if every and beat is not None and beat + timedelta(seconds=every) < expires and \
            lease["state_entered_at"] < expires:
        return "heartbeat"
    return "expired"


@dataclass
class PassReport:
    """What one pass did (for logs, tests and the bench)."""

    allocated: list[str] = field(default_factory=list)
    activated: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    rehold: list[str] = field(default_factory=list)
    skipped: bool = False


def rank_key(lease: Mapping[str, Any], usage: Mapping[str, float], now: datetime,
             boost: float) -> tuple[Any, ...]:
    """A queued lease's place: higher priority first; within a class, the
    share that used the least board-time lately, less a boost for each
    second waited; then the oldest."""
    waited = (now - lease["requested_at"]).total_seconds()
    return (-lease["priority"], usage.get(lease["share"], 0.0) - boost * waited,
            lease["requested_at"], lease["id"])


def current_release(board: MachineRow) -> str | None:
    """What a board runs: the release of its last reimage, else its inventory's."""
    return (board.vars or {}).get("release") or board.attrs.get("release") or None


class LeaseScheduler:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def run_pass(self) -> PassReport:
        """One pass (see the module docstring). A pass that finds another
        process passing (MariaDB's lock wait) is skipped."""
        try:
            with self.engine.transaction() as unit:
                unit.tx.lock_named(LOCK)
                report = _Pass(self, unit).run()
        except Unavailable as exc:
            if "lock" not in str(exc):
                raise
            return PassReport(skipped=True)
        if report.allocated or report.finished or report.returned:
            log.info("lease_pass", allocated=len(report.allocated),
                     activated=len(report.activated), returned=len(report.returned),
                     finished=len(report.finished))
        return report


class _Pass:
    def __init__(self, scheduler: LeaseScheduler, unit: Transaction) -> None:
        self.settings = scheduler.settings
        self.unit = unit
        self.tx = unit.tx
        self.now = unit.now
        self.report = PassReport()

    def run(self) -> PassReport:
        tx = self.tx
        # Only what needs a look is read: leases preparing or returning, the
        # holders of boards that are not `leased` (a reboot came back, a board
        # failed), leases ended by hand that still hold boards, and active
        # ones due a warning; then the boards of those and the free ones. An
        # active lease whose boards are all held costs nothing, and queued
        # leases are read only when a board is free (below).
        warn = self.now + timedelta(seconds=self.settings.lease_expiry_warning)
        leases = {lease["id"]: lease for lease in
                  tx.leases.list(kind=KIND, states=["preparing", "returning"], limit=10**9)}
        for lease in tx.leases.warning_due(kind=KIND, state="active", due=warn):
            leases.setdefault(lease["id"], lease)
        wanted = [i for i in tx.leases.unsettled(kind=KIND, board_kind=BOARD,
                                                 holding="active", held="leased")
                  if i not in leases]
        for lease in tx.leases.by_ids(wanted, kind=KIND):
            leases[lease["id"]] = lease
        self.holds = tx.leases.holds_of(list(leases))
        self.returned = tx.leases.boards_of(
            [i for i, lease in leases.items() if lease["state"] == "returning"])
        names = set(self.holds) | {b["board"] for bs in self.returned.values() for b in bs}
        self.boards = {b.name: b for b in tx.machines.list(BOARD, names=sorted(names))}
        self.free = tx.leases.free_boards(board_kind=BOARD, state="ready")
        self.boards.update((b.name, b) for b in self.free)
        held: dict[int, list[str]] = {}
        for board, (lease_id, _) in sorted(self.holds.items()):
            held.setdefault(lease_id, []).append(board)
        self._wait_again(tx.leases.list(kind=KIND, states=["allocating"], limit=10**9))
        for lease_id in sorted(leases):
            lease, mine = leases[lease_id], held.get(lease_id, [])
            if lease["state"] == "returning" or lease["state"] in ENDED:
                self._return(lease, mine)
            elif lease["state"] == "preparing":
                self._prepare(lease, mine)
            elif lease["state"] == "active":
                self._keep(lease, mine)
        if self.free:
            self._schedule()
        return self.report

    # -- ended leases
    def _return(self, lease: dict[str, Any], mine: list[str]) -> None:
        unit, name = self.unit, lease["name"]
        for board in mine:
            row = unit.lock(BOARD, board)
            self.tx.leases.unhold(board, lease["id"], self.now)
            del self.holds[board]
            payload = {"lease": name}
            if lease["on_return"] == "power_cycle":
                event = "lease_return_cycle"
            else:
                event = "lease_return"
                payload["release"] = (self.settings.lease_baseline_release
                                      or self.boards[board].attrs.get("release") or "")
            machine = unit.machines[BOARD]
            if event in machine.allowed_events(row.state):
                after = unit.fire(row, event, source="operator", role=Role.LEASE,
                                  actor="scheduler", reason=f"{name} ended", payload=payload)
                self._moved(board, after.state)
                self.report.returned.append(board)
        if lease["state"] != "returning":
            return
        boards = self.returned.get(lease["id"])
        if boards is None:  # it began returning in this pass
            boards = self.tx.leases.boards_of([lease["id"]])[lease["id"]]
        away = [b["board"] for b in boards
                if self._state(b["board"]) in RETURN_PATH and b["board"] not in self.holds]
        if away:
            return
        ended_by = lease["ended_by"] or self._how_it_ended(lease)
        row = unit.lock(KIND, name)
        unit.fire(row, FINAL_EVENT.get(ended_by, "returned"), source="operator",
                  role=Role.LEASE, actor="scheduler",
                  reason=f"{ended_by}; boards back: {', '.join(b['board'] for b in boards)}"
                  if boards else ended_by)
        self.tx.leases.update(name, ended_by=ended_by, ended_at=lease["ended_at"]
                              or lease.get("state_entered_at") or self.now)
        self.report.finished.append(name)

    def _how_it_ended(self, lease: dict[str, Any]) -> str:
        return how_it_ended(lease)

    def _state(self, board: str) -> str | None:
        row = self.boards.get(board)
        return row.state if row else None

    # -- preparing and active leases
    def _prepare(self, lease: dict[str, Any], mine: list[str]) -> None:
        unit, name = self.unit, lease["name"]
        # A held board that comes back from a reimage passes check_queued
        # on its way to ready (the health pass hands it back unchecked).
        broken = [b for b in mine if self._state(b) not in (*RETURN_PATH, "ready", "leased")]
        if broken:
            row = unit.lock(KIND, name)
            unit.fire(row, "fail", source="operator", role=Role.LEASE, actor="scheduler",
                      reason=f"board {broken[0]} is {self._state(broken[0])}")
            self.tx.leases.update(name, ended_by="failed", ended_at=self.now)
            lease = {**lease, "state": "returning", "ended_by": "failed"}
            self._return(lease, mine)
            return
        self._hold_ready(name, mine)
        if mine and all(self._state(b) == "leased" for b in mine):
            self._activate(lease)

    def _keep(self, lease: dict[str, Any], mine: list[str]) -> None:
        self._hold_ready(lease["name"], mine)
        warn = timedelta(seconds=self.settings.lease_expiry_warning)
        if lease["warned_at"] is None and lease["expires_at"] is not None and \
                lease["expires_at"] - warn <= self.now:
            row = self.unit.lock(KIND, lease["name"])
            self.unit.fire(row, "expiry_warning", source="operator", role=Role.LEASE,
                           actor="scheduler", reason=f"expires at {iso(lease['expires_at'])}",
                           payload={"expires_at": iso(lease["expires_at"])})
            self.tx.leases.update(lease["name"], warned_at=self.now)

    def _hold_ready(self, name: str, boards: Iterable[str]) -> None:
        for board in boards:
            if self._state(board) == "ready":
                row = self.unit.lock(BOARD, board)
                if row.state == "ready":
                    after = self.unit.fire(row, "lease_hold", source="operator",
                                           role=Role.LEASE, actor="scheduler", reason=name,
                                           payload={"lease": name})
                    self._moved(board, after.state)
                    self.report.rehold.append(board)

    def _activate(self, lease: dict[str, Any]) -> None:
        name = lease["name"]
        expires = self.now + timedelta(seconds=lease["duration_s"])
        row = self.unit.lock(KIND, name)
        row = self.unit.fire(row, "prepared", source="operator", role=Role.LEASE,
                             actor="scheduler", reason=f"until {iso(expires)}",
                             payload={"expires_at": iso(expires)})
        self.tx.leases.update(name, activated_at=self.now, expires_at=expires,
                              heartbeat_at=self.now)
        if lease["heartbeat_s"]:
            self.tx.machines.set_deadline(row.id, min(
                expires, self.now + timedelta(seconds=lease["heartbeat_s"])))
        self.report.activated.append(name)

    def _moved(self, board: str, state: str) -> None:
        row = self.boards[board]
        self.boards[board] = dataclasses.replace(row, state=state)

    # -- queued leases
    def _schedule(self) -> None:
        settings = self.settings
        free = {b.name: self.boards[b.name] for b in self.free
                if self.boards[b.name].state == "ready" and b.name not in self.holds}
        if not free:
            return
        facts = {n: selectors.facts_of(n, b.attrs) for n, b in free.items()}
        # Only the leases that could use a free board are read and ranked: one
        # that matches none can neither be served nor keep a board from others.
        asks = self.tx.leases.asks(kind=KIND, states=WAITING)
        parsed: dict[str | None, selectors.Selector | None] = {
            text: selectors.parse(text) if text else None for _, text in asks}

        def could_use(board: str | None, selector: selectors.Selector | None) -> bool:
            if board is not None:
                return board in free
            return selector is None or any(selector.matches(f) for f in facts.values())

        usable = [(board, text) for board, text in asks if could_use(board, parsed[text])]
        if not usable:
            return
        queued = self.tx.leases.queue(kind=KIND, states=WAITING, asks=usable)
        usage = self.tx.leases.usage(self.now - timedelta(seconds=settings.lease_share_window),
                                     self.now)
        owners_held = self.tx.leases.held_boards(kind=KIND, states=["preparing", "active"])
        reserve_after = timedelta(seconds=settings.lease_reserve_after)
        ranked = sorted(queued, key=lambda x: rank_key(x, usage, self.now,
                                                       settings.lease_wait_boost))
        for lease in ranked:
            if not free:
                break
            if owners_held.get(lease["owner"], 0) + lease["count"] > \
                    settings.lease_quota_boards:
                continue
            text = lease["selector"]
            chosen = self._choose(lease, parsed[text], free, facts)
            if chosen is None:
                if lease["state"] == "queued" and \
                        self.now - lease["state_entered_at"] >= reserve_after:
                    self._reserve(lease, len(self._matching(lease, parsed[text], free, facts)))
                    lease = {**lease, "state": "allocating"}
                if lease["state"] == "allocating":
                    # Keep what it could use from the leases ranked below it.
                    for board in self._matching(lease, parsed[text], free, facts):
                        free.pop(board, None)
                continue
            self._allocate(lease, chosen)
            for board in chosen:
                free.pop(board)
            owners_held[lease["owner"]] = owners_held.get(lease["owner"], 0) + len(chosen)

    def _reserve(self, lease: dict[str, Any], free: int) -> None:
        row = self.unit.lock(KIND, lease["name"])
        self.unit.fire(row, "reserve", source="operator", role=Role.LEASE, actor="scheduler",
                       reason=f"waiting for {lease['count']} board(s), {free} free now: keeps "
                              f"them from the leases ranked below it",
                       payload={"wait_until": iso(lease["wait_until"])})

    def _wait_again(self, allocating: list[dict[str, Any]]) -> None:
        """Allocating leases that kept boards for ``lease_reserve_for`` give
        them back and queue again (their wait timeout still counts)."""
        bound = timedelta(seconds=self.settings.lease_reserve_for)
        for lease in allocating:
            if self.now - lease["state_entered_at"] >= bound:
                row = self.unit.lock(KIND, lease["name"])
                self.unit.fire(row, "wait_again", source="operator", role=Role.LEASE,
                               actor="scheduler",
                               reason=f"kept free boards for {int(bound.total_seconds())} s; "
                                      f"gives them back and waits in the queue again",
                               payload={"wait_until": iso(lease["wait_until"])})

    def _matching(self, lease: dict[str, Any], selector: selectors.Selector | None,
                  free: Mapping[str, MachineRow], facts: Mapping[str, Mapping[str, str]]
                  ) -> list[str]:
        if lease["board"]:
            return [lease["board"]] if lease["board"] in free else []
        return [n for n in free if selector is None or selector.matches(facts[n])]

    def _choose(self, lease: dict[str, Any], selector: selectors.Selector | None,
                free: Mapping[str, MachineRow], facts: Mapping[str, Mapping[str, str]]
                ) -> list[str] | None:
        matching = self._matching(lease, selector, free, facts)
        if len(matching) < lease["count"]:
            return None
        wanted = lease["release"]
        # Boards already on the requested release first (no reimage), then by name.
        matching.sort(key=lambda n: (wanted is not None and current_release(free[n]) != wanted,
                                     n))
        return matching[:lease["count"]]

    def _allocate(self, lease: dict[str, Any], boards: list[str]) -> None:
        unit, name = self.unit, lease["name"]
        lease_row = unit.lock(KIND, name)
        unit.fire(lease_row, "allocated", source="operator", role=Role.LEASE, actor="scheduler",
                  reason=", ".join(boards), payload={"boards": boards})
        for board in boards:
            row = unit.lock(BOARD, board)
            epoch = self.tx.leases.hold(board, lease["id"], self.now)
            self.holds[board] = (lease["id"], epoch)
            wanted = lease["release"]
            payload: dict[str, Any] = {"lease": name, "epoch": epoch}
            if wanted is not None and current_release(self.boards[board]) != wanted:
                after = unit.fire(row, "lease_reimage", source="operator", role=Role.LEASE,
                                  actor="scheduler", reason=f"{name}: release {wanted}",
                                  payload={**payload, "release": wanted})
            else:
                after = unit.fire(row, "lease_hold", source="operator", role=Role.LEASE,
                                  actor="scheduler", reason=name, payload=payload)
            self._moved(board, after.state)
        self.report.allocated.append(name)
        if all(self._state(b) == "leased" for b in boards):
            self._activate({**lease, "state": "preparing"})
