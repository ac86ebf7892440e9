"""Leases: requests, what a holder does with its boards, and the reads
(docs/leases.md).

Each call is one short engine transaction that locks the lease machine's row
(and, for a holder's event, then the board's: always in that order, as the
scheduler does). Boards are taken and given back only by the scheduler's
pass (:mod:`corral.leases.scheduler`), which this service runs at once after
a lease asks or ends.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from corral.config import Settings
from corral.engine.core import Engine
from corral.engine.firing import Guard
from corral.errors import Conflict, Forbidden, InvalidRequest, NotFound, StateMismatch
from corral.leases import selector as selectors
from corral.leases.model import (
    BOARD,
    ENDED,
    HOLDING,
    KIND,
    OPEN,
    QUEUED,
    Caller,
    LeaseRequest,
    iso,
)
from corral.machines.needs import Needs, check_needs
from corral.names import LEASE_NAME, Role
from corral.tokens import HOLDER_ROLE, mint

log = structlog.get_logger("corral.leases")

# The board events only the lease scheduler fires.
BOARD_EVENTS = ("lease_hold", "lease_reimage", "lease_unhold", "lease_return",
                "lease_return_cycle")
LEASE_EVENTS = ("queue", "reserve", "wait_again", "allocated", "prepared", "renew",
                "expiry_warning", "release",
                "revoke", "fail", "returned", "returned_expired", "returned_revoked",
                "returned_failed")
NEEDS = [Needs(service="leases", kind=KIND, states=(*OPEN, *ENDED), events=LEASE_EVENTS),
         Needs(service="leases", kind=BOARD, states=("ready", "leased", "returning"),
               events=BOARD_EVENTS)]


class LeaseEnded(Conflict):
    """A holder acted after its lease ended, or on a board it no longer holds
    (fencing: HTTP 409)."""


def install(engine: Engine) -> None:
    """Only the lease service fires the lease machine's events and the
    boards' lease events, and nobody but a board's holder (and the
    scheduler) changes a held board."""
    if KIND not in engine.machines:
        return
    check_needs(engine.machines, NEEDS)
    engine.firing.reserve_events(KIND, LEASE_EVENTS, "use `corral lease ...` or the lease "
                                 "routes")
    engine.firing.reserve_events(BOARD, BOARD_EVENTS, "the lease scheduler fires it")
    engine.firing.guard(BOARD, Guard(read=lambda tx, names: tx.leases.holds(names),
                                     refusal=held_refusal))
    engine.explainers.setdefault(BOARD, []).append(explain_holder)


def explain_holder(engine: Engine, row: Any) -> tuple[str, Any, str | None]:
    """What ``corral board explain`` adds: the lease holding the board, by
    whom and until when."""
    holder = holder_of(engine, row.name)
    if holder is None:
        return "holder", None, None
    until = f" until {holder['expires_at']}" if holder["expires_at"] else ""
    return "holder", holder, (f"It is held by {holder['lease']} ({holder['owner']}, "
                              f"{holder['state']}){until}.")


def holder_of(engine: Engine, board: str) -> dict[str, Any] | None:
    """The lease holding ``board`` now (name, owner, state, epoch, purpose,
    expires_at), or None."""
    with engine.store.unit() as tx:
        holds = tx.leases.holds([board])
        if board not in holds:
            return None
        lease_id, epoch = holds[board]
        found = tx.leases.get(f"lease-{lease_id}")
    if found is None:
        return None
    return {"lease": found["name"], "owner": found["owner"], "state": found["state"],
            "epoch": epoch, "purpose": found["purpose"], "expires_at": iso(found["expires_at"])}


def held_refusal(holds: Mapping[str, tuple[int, int]], name: str) -> Conflict | None:
    """The guard on people's events and forced states on boards: a person
    may not change a board a lease holds (the lease must be revoked first)."""
    if name not in holds:
        return None
    lease_id, _ = holds[name]
    return Conflict(f"board {name!r} is held by lease lease-{lease_id}; an admin revokes "
                    f"it first (corral lease revoke lease-{lease_id})")


class LeaseService:
    """Args:
        engine: runs the lease and board machines.
        settings: the ``lease_*`` settings.
        kick: runs the scheduler's pass (after a lease asks or ends).
    """

    def __init__(self, engine: Engine, settings: Settings,
                 kick: Callable[[], object] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.kick = kick or (lambda: None)
        engine.machine(KIND)

    # ------------------------------------------------------------ requests
    def request(self, spec: LeaseRequest, caller: Caller, *,
                attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Queue a lease; returns its view with its token (shown once).
        ``attrs`` are kept on the lease's machine (a job's lease says which
        job and action asked, see :mod:`corral.jobs.leasing`).

        Raises:
            InvalidRequest: a selector that does not parse, a duration over
                the maximum, a release or a board that does not exist.
            Conflict: the owner's queued leases are at their quota, or fewer
                boards exist than it asks for.
            Forbidden: a viewer's token (leasing needs the user role).
        """
        if caller.role not in (Role.USER, Role.OPERATOR, Role.ADMIN):
            raise Forbidden(f"leasing boards needs the user role; token {caller.name!r} is "
                            f"{caller.role}", role=caller.role)
        settings = self.settings
        selector = selectors.parse(spec.selector) if spec.selector else None
        duration = spec.duration or settings.lease_default_duration
        if duration > settings.lease_max_duration:
            raise InvalidRequest(f"duration {duration} s is over the maximum of "
                                 f"{settings.lease_max_duration} s (lease_max_duration)")
        wait = spec.wait_timeout or settings.lease_max_wait
        if wait > settings.lease_max_wait:
            raise InvalidRequest(f"wait timeout {wait} s is over the maximum of "
                                 f"{settings.lease_max_wait} s (lease_max_wait)")
        if spec.count > settings.lease_quota_boards:
            raise Conflict(f"{spec.count} boards is over the quota of "
                           f"{settings.lease_quota_boards} boards at once per owner")
        with self.engine.transaction() as unit:
            tx, now = unit.tx, unit.now
            self._check_possible(tx, spec, selector)
            queued = tx.leases.count_queued(kind=KIND, owner=caller.name, states=QUEUED)
            if queued >= settings.lease_quota_queued:
                raise Conflict(f"{caller.name} already has {queued} leases queued, the quota "
                               f"(lease_quota_queued); release one or wait")
            wait_until = now + timedelta(seconds=wait)
            record = {"owner": caller.name, "share": spec.project or caller.name,
                      "priority": spec.priority, "board": spec.board,
                      "selector": str(selector) if selector else None, "count": spec.count,
                      "release": spec.release, "duration_s": duration,
                      "heartbeat_s": spec.heartbeat, "on_return": spec.on_return,
                      "purpose": spec.purpose, "requested_at": now, "wait_until": wait_until}
            name = tx.leases.insert(record)
            row = unit.create(KIND, name, {**(attrs or {}), "owner": caller.name},
                              actor=caller.name,
                              reason=spec.purpose or "requested")
            unit.fire(row, "queue", source="operator", role=Role.LEASE, actor=caller.name,
                      reason=_wants(record), payload={"wait_until": iso(wait_until)})
            token = mint(tx, name=f"lease:{name}", role=HOLDER_ROLE, machine_id=row.id,
                         now=now)
        self._kick()
        view = self.show(name, caller)
        return {**view, "token": token}

    def _check_possible(self, tx: Any, spec: LeaseRequest,
                        selector: selectors.Selector | None) -> None:
        boards = [b for b in tx.machines.list(BOARD) if b.state != "retired"]
        if spec.board is not None:
            if not any(b.name == spec.board for b in boards):
                raise NotFound(f"no board named {spec.board!r} (that is not retired)")
            return
        if selector is None:
            matching = len(boards)
        else:
            matching = sum(1 for b in boards
                           if selector.matches(selectors.facts_of(b.name, b.attrs)))
        if matching < spec.count:
            raise Conflict(f"only {matching} board(s) in the lab match "
                           f"{str(selector) or 'any board'}; the lease asks for {spec.count}")

    # ------------------------------------------------------------ the holder's calls
    def renew(self, name: str, caller: Caller, duration: int | None = None
              ) -> dict[str, Any]:
        """Push an active lease's expiry to ``duration`` seconds from now
        (default: its own duration), within lease_max_total of its start.

        Raises: Conflict (not active, or past the cap).
        """
        with self.engine.transaction() as unit:
            lease, row = self._locked(unit, name, caller)
            if row.state != "active":
                raise LeaseEnded(self._not_active(lease, row.state))
            seconds = duration or lease["duration_s"]
            if seconds > self.settings.lease_max_duration:
                raise InvalidRequest(f"duration {seconds} s is over the maximum of "
                                     f"{self.settings.lease_max_duration} s")
            latest = lease["activated_at"] + timedelta(seconds=self.settings.lease_max_total)
            expires = unit.now + timedelta(seconds=seconds)
            if expires > latest:
                raise Conflict(f"lease {name} may last until {iso(latest)} at most "
                               f"(lease_max_total {self.settings.lease_max_total} s); "
                               f"renewing for {seconds} s would end at {iso(expires)}")
            row = unit.fire(row, "renew", source="operator", role=Role.HOLDER,
                            actor=caller.name, reason=f"until {iso(expires)}",
                            payload={"expires_at": iso(expires)})
            unit.tx.leases.update(name, expires_at=expires, heartbeat_at=unit.now,
                                  warned_at=None)
            unit.tx.machines.set_deadline(row.id, self._deadline(
                expires, unit.now, lease["heartbeat_s"]))
        return self.show(name, caller)

    def heartbeat(self, name: str, caller: Caller) -> dict[str, Any]:
        """Say the holder is alive: an active lease with a heartbeat interval
        ends if none comes within it. Nothing is written to the history.

        Raises: Conflict (the lease has ended).
        """
        with self.engine.transaction() as unit:
            lease, row = self._locked(unit, name, caller)
            if row.state not in (*QUEUED, *HOLDING):
                raise LeaseEnded(self._not_active(lease, row.state))
            unit.tx.leases.update(name, heartbeat_at=unit.now)
            if row.state == "active":
                unit.tx.machines.set_deadline(row.id, self._deadline(
                    lease["expires_at"], unit.now, lease["heartbeat_s"]))
        return self.show(name, caller)

    def release(self, name: str, caller: Caller, *, reason: str | None = None
                ) -> dict[str, Any]:
        """End a lease: a queued one is cancelled, a held one's boards go home.
        Releasing an ended lease changes nothing and is not an error."""
        with self.engine.transaction() as unit:
            _lease, row = self._locked(unit, name, caller)
            if row.state in ("returning", *ENDED):
                return self.show(name, caller)
            ended_by = "cancelled" if row.state in QUEUED else "released"
            unit.fire(row, "release", source="operator", role=Role.HOLDER, actor=caller.name,
                      reason=reason or f"released by {caller.name}")
            unit.tx.leases.update(name, ended_by=ended_by, ended_at=unit.now)
        self._kick()
        return self.show(name, caller)

    def revoke(self, name: str, caller: Caller, *, reason: str,
               if_state: str | None = None) -> dict[str, Any]:
        """An admin ends a lease now, whoever holds it (``if_state``: only if
        it is in that state, like a forced state)."""
        if not caller.is_admin:
            raise Forbidden(f"revoking a lease needs the admin role; token {caller.name!r} "
                            f"is {caller.role}", role=caller.role)
        if not reason or not reason.strip():
            raise InvalidRequest("a reason is required to revoke a lease")
        with self.engine.transaction() as unit:
            _lease, row = self._locked(unit, name, caller)
            if if_state is not None and row.state != if_state:
                raise StateMismatch(KIND, name, if_state, row.state)
            if row.state in ("returning", *ENDED):
                raise Conflict(f"lease {name} has already ended ({row.state})")
            unit.fire(row, "revoke", source="operator", role=Role.ADMIN, actor=caller.name,
                      reason=reason)
            unit.tx.leases.update(name, ended_by="revoked", ended_at=unit.now)
        self._kick()
        return self.show(name, caller)

    def holder_event(self, name: str, caller: Caller, board: str, event: str,
                     payload: Any = None) -> dict[str, Any]:
        """Fire a holder's event (``by: holder``) at one of an active lease's
        boards, checked against the board's lease epoch in the transaction
        that fires it.

        Raises:
            LeaseEnded: the lease is not active, or the board is no longer
                its (a stale holder): nothing happens.
            Forbidden: not the lease's own token.
        """
        if caller.role != Role.HOLDER or caller.lease != name:
            raise Forbidden(f"a holder's events need lease {name}'s own token (from its "
                            f"request)", role=caller.role)
        with self.engine.transaction() as unit:
            lease, row = self._locked(unit, name, caller)
            if row.state != "active":
                raise LeaseEnded(self._not_active(lease, row.state))
            mine = {b["board"]: b for b in unit.tx.leases.boards_of([lease["id"]])[lease["id"]]}
            holder, epoch = unit.tx.leases.epoch(board)
            if board not in mine or holder != lease["id"] or mine[board]["epoch"] != epoch:
                raise LeaseEnded(f"lease {name} does not hold board {board!r} (its lease "
                                 f"epoch is {epoch}); nothing was done")
            board_row = unit.lock(BOARD, board)
            after = unit.fire(board_row, event, source="operator", role=Role.HOLDER,
                              actor=f"{lease['owner']} ({name})", payload=payload,
                              reason=f"holder of {name} (epoch {epoch})")
        return {"board": board, "event": event, "from_state": board_row.state,
                "to_state": after.state, "lease": name, "epoch": epoch}

    # ------------------------------------------------------------ reads
    def get(self, name: str) -> dict[str, Any]:
        if not LEASE_NAME.matches(name):
            raise NotFound(f"no lease named {name!r}")
        with self.engine.store.unit() as tx:
            lease = tx.leases.get(name)
            if lease is None:
                raise NotFound(f"no lease named {name!r}")
            lease["boards"] = tx.leases.boards_of([lease["id"]])[lease["id"]]
        return lease

    def show(self, name: str, caller: Caller | None = None) -> dict[str, Any]:
        return view(self.get(name))

    def list(self, *, states: list[str] | None = None, owner: str | None = None,
             open_only: bool = False, ended_only: bool = False,
             limit: int = 500) -> list[dict[str, Any]]:
        """Leases newest first; ``open_only``: those that have not ended;
        ``ended_only``: those that have, the last to end first; both: every
        lease, newest first (open or ended is any lease)."""
        by_end = ended_only and not open_only
        if open_only and not ended_only:
            states = list(OPEN)
        elif by_end:
            states = [s for s in ENDED if states is None or s in states]
        with self.engine.store.unit() as tx:
            rows = tx.leases.list(kind=KIND, states=states, owner=owner, limit=limit,
                                  by_end=by_end)
            boards = tx.leases.boards_of([r["id"] for r in rows])
        return [view({**r, "boards": boards[r["id"]]}) for r in rows]

    def explain(self, name: str) -> dict[str, Any]:
        """Why the lease waits (see :mod:`corral.leases.explain`)."""
        from corral.leases.explain import explain

        self.get(name)
        with self.engine.store.unit() as tx:
            lease = tx.leases.get(name)
            if lease is None:
                raise NotFound(f"no lease named {name!r}")
            return explain(tx, lease, self.settings, self.engine.clock())

    def queue(self, *, limit: int = 500) -> dict[str, Any]:
        """The queue by priority class in the scheduler's order (see
        :func:`corral.leases.explain.queue`)."""
        from corral.leases.explain import queue

        with self.engine.store.unit() as tx:
            return queue(tx, self.settings, self.engine.clock(), limit=limit)

    def holders(self, board: str, *, at: datetime | None = None) -> builtins.list[dict[str, Any]]:
        """Who held ``board`` (at ``at``), newest first, from lease_boards."""
        self.engine.get(BOARD, board)
        with self.engine.store.unit() as tx:
            rows = tx.leases.holders(board, at=at)
        return [{"lease": r["name"], "owner": r["owner"], "purpose": r["purpose"],
                 "epoch": r["epoch"], "from": iso(r["held_at"]), "until": iso(r["released_at"])}
                for r in rows]

    def holder_of(self, board: str) -> dict[str, Any] | None:
        """See :func:`holder_of`."""
        return holder_of(self.engine, board)

    # ------------------------------------------------------------ internals
    def _locked(self, unit: Any, name: str, caller: Caller) -> tuple[dict[str, Any], Any]:
        if not LEASE_NAME.matches(name):
            raise NotFound(f"no lease named {name!r}")
        try:
            row = unit.lock(KIND, name)
        except NotFound:
            raise NotFound(f"no lease named {name!r}") from None
        lease = unit.tx.leases.get(name)
        if lease is None:
            raise NotFound(f"no lease named {name!r}")
        if not caller.manages(lease):
            raise Forbidden(f"lease {name} is {lease['owner']}'s; token {caller.name!r} may "
                            f"not change it", role=caller.role)
        return lease, row

    def _not_active(self, lease: dict[str, Any], state: str) -> str:
        if state in ("returning", *ENDED):
            how = lease.get("ended_by") or state
            return (f"lease {lease['name']} has ended ({how}; it is {state}): its boards are "
                    f"no longer its holder's; nothing was done")
        return f"lease {lease['name']} is {state}, not active yet; nothing was done"

    @staticmethod
    def _deadline(expires: datetime, now: datetime, heartbeat_s: int | None) -> datetime:
        if heartbeat_s:
            return min(expires, now + timedelta(seconds=heartbeat_s))
        return expires

    def _kick(self) -> None:
        try:
            self.kick()
        except Exception as exc:  # the periodic pass will do it
            log.warning("lease_pass_failed", error=f"{type(exc).__name__}: {exc}")


def _wants(record: dict[str, Any]) -> str:
    what = (f"board {record['board']}" if record["board"]
            else f"{record['count']} board(s) matching {record['selector'] or 'anything'}")
    if record["release"]:
        what += f" on {record['release']}"
    return f"{what} for {record['duration_s']} s"


def view(lease: dict[str, Any]) -> dict[str, Any]:
    """A lease as answers show it (never its token)."""
    held = [b for b in lease.get("boards", []) if b["released_at"] is None]
    return {
        "id": lease["name"], "state": lease["state"], "owner": lease["owner"],
        "project": lease["share"] if lease["share"] != lease["owner"] else None,
        "priority": lease["priority"], "board": lease["board"], "selector": lease["selector"],
        "count": lease["count"], "release": lease["release"],
        "duration": lease["duration_s"], "heartbeat": lease["heartbeat_s"],
        "on_return": lease["on_return"], "purpose": lease["purpose"],
        "boards": [b["board"] for b in held] if lease["state"] in HOLDING
        else [b["board"] for b in lease.get("boards", [])],
        "epochs": {b["board"]: b["epoch"] for b in held},
        "requested_at": iso(lease["requested_at"]), "wait_until": iso(lease["wait_until"]),
        "activated_at": iso(lease["activated_at"]), "expires_at": iso(lease["expires_at"]),
        "heartbeat_at": iso(lease["heartbeat_at"]), "deadline": iso(lease["deadline"]),
        # A wait that timed out is the deadline sweep's (the lease row says
        # nothing): it is the only way to `cancelled` without an owner.
        "ended_by": lease["ended_by"] or ("wait_timeout" if lease["state"] == "cancelled"
                                          else None),
        "ended_at": iso(lease["ended_at"] or (lease["state_entered_at"]
                                              if lease["state"] == "cancelled" else None)),
    }
