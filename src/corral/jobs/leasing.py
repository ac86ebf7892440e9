"""The leases a job holds (``leaseAction``, corral/v2): requesting them,
watching them, and giving them back when the job ends.

A job's lease is an ordinary lease (docs/leases.md) owned by the job's
submitter, so it counts against the submitter's quotas and fair share, with
the job and the action that asked for it on its machine's attributes
(``job``, ``action``, ``attempt``). What the job knows of its leases is in its
own vars: ``lease``, the lease the current action waits for (``""`` when
none), and ``leases``, the leases it holds (comma-separated names).

Nothing is kept in memory. :meth:`JobLeases.watch_pass`, run every
``job_dispatch_interval`` seconds by each worker process (and at once after a
request), looks at what the rows say, level-triggered like the lease
scheduler's pass, so a pass missed or killed is made up by the next one:

1. a job waiting for a lease that is now active hears ``action_done``; one
   whose lease ended before it was active hears ``action_failed``;
2. a running job one of whose held leases ended (it expired, an admin revoked
   it) hears ``lease_lost`` and ends ``incomplete``;
3. a held lease with a heartbeat interval is heartbeaten (every third of its
   interval);
4. an open lease of a job that has ended is released (a request that raced
   the job's cancel).

``finish_job`` releases every open lease of the job whatever way it ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from corral.engine.core import Engine
from corral.errors import Conflict, CorralError, Forbidden, InvalidRequest, NotFound
from corral.leases import selector as selectors
from corral.leases.model import BOARD, ENDED, OPEN, Caller, LeaseRequest
from corral.leases.model import KIND as LEASE
from corral.leases.scheduler import how_it_ended
from corral.leases.service import LeaseService, view
from corral.machines.needs import Needs, check_needs
from corral.names import Role
from corral.operations.base import OperationFailed

log = structlog.get_logger("corral.jobs")

JOB = "job"
FINAL = ("complete", "incomplete", "canceled")
GONE = ("returning", *ENDED)
LEASE_EVENTS = ("action_done", "action_failed", "lease_lost")
NEEDS = (Needs(service="job leases", kind=JOB, states=("running", "waiting", *FINAL),
               events=LEASE_EVENTS),)


def names_of(text: Any) -> list[str]:
    """The lease names of a job's ``leases`` var."""
    return [n for n in str(text or "").split(",") if n]


def _how(lease: Mapping[str, Any]) -> str:
    """How a lease ended: its row's word, or, while its boards go home after
    its deadline passed, what the lease scheduler will write."""
    if lease.get("ended_by"):
        return str(lease["ended_by"])
    return how_it_ended(lease) if lease["state"] == "returning" else str(lease["state"])


def leases_of(engine: Engine, variables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A job's leases as answers show them: those it holds, then the one it
    waits for (``held`` false), each with its state, boards and expiry."""
    held = names_of(variables.get("leases"))
    waiting = variables.get("lease")
    names = list(held)
    if isinstance(waiting, str) and waiting and waiting not in names:
        names.append(waiting)
    found = []
    with engine.store.unit() as tx:
        for name in names:
            lease = tx.leases.get(name)
            if lease is None:
                continue
            boards = tx.leases.boards_of([lease["id"]])[lease["id"]]
            shown = view({**lease, "boards": boards})
            found.append({"id": shown["id"], "state": shown["state"],
                          "boards": shown["boards"], "expires_at": shown["expires_at"],
                          "ended_by": shown["ended_by"], "held": name in held})
    return found


def explain_leases(engine: Engine, row: Any) -> tuple[str, Any, str | None]:
    """What ``corral job explain`` adds: the leases the job holds or waits for."""
    leases = leases_of(engine, row.vars or {})
    sentences = []
    for lease in leases:
        boards = ", ".join(lease["boards"]) or "no boards yet"
        if lease["held"] and lease["state"] == "active":
            sentences.append(f"It holds {lease['id']} (boards {boards}) until "
                             f"{lease['expires_at']}.")
        elif lease["held"]:
            sentences.append(f"It held {lease['id']} ({lease['state']}).")
        else:
            sentences.append(f"It waits for {lease['id']} ({lease['state']}; `corral lease "
                             f"explain {lease['id']}` says why).")
    return "leases", leases, " ".join(sentences) or None


@dataclass
class WatchReport:
    """What one pass did (for logs and tests)."""

    active: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    heartbeats: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)


class JobLeases:
    """Args:
        engine: runs the job and lease machines.
        leases: the lease service the requests go through.
    """

    def __init__(self, engine: Engine, leases: LeaseService) -> None:
        self.engine = engine
        self.leases = leases
        check_needs(engine.machines, NEEDS)
        engine.firing.reserve_events(JOB, ("lease_lost",), "the job's lease watcher sends it")

    # ------------------------------------------------------------ dispatch
    def problem(self, params: Mapping[str, Any]) -> str | None:
        """Why the lab cannot serve this lease, or None (a dispatch check)."""
        settings = self.leases.settings
        if params["duration_seconds"] > settings.lease_max_duration:
            return (f"the lease duration of {params['duration_seconds']} s is over the "
                    f"maximum of {settings.lease_max_duration} s (lease_max_duration)")
        selector = selectors.parse(params["selector"])
        with self.engine.store.unit() as tx:
            boards = [b for b in tx.machines.list(BOARD) if b.state != "retired"]
        matching = sum(1 for b in boards if selector.matches(selectors.facts_of(b.name,
                                                                                b.attrs)))
        if matching < params["count"]:
            return (f"only {matching} board(s) in the lab match {selector}; the lease asks "
                    f"for {params['count']}")
        return None

    # ------------------------------------------------------------ requests
    def request(self, *, job: str, owner: str, params: Mapping[str, Any], action: str,
                attempt: int, wait_seconds: int, purpose: str) -> str:
        """The lease for one attempt of one action: requested once (a retried
        operation finds the one it asked for), owned by ``owner``.

        Raises:
            OperationFailed: the lease service refused the request.
        """
        for lease in self._open_of(job):
            if (lease.attrs.get("action"), lease.attrs.get("attempt")) == (action, attempt):
                return lease.name
        wait = max(1, min(wait_seconds, self.leases.settings.lease_max_wait))
        try:
            answer = self.leases.request(
                LeaseRequest(selector=params["selector"], count=params["count"],
                             duration=params["duration_seconds"], release=params["release"],
                             heartbeat=params["heartbeat_seconds"],
                             priority=params["priority"],
                             on_return=params.get("on_return", "reimage"), wait_timeout=wait,
                             purpose=purpose[:500]),
                Caller(name=owner, role=Role.USER),
                attrs={"job": job, "action": action, "attempt": attempt})
        except (Conflict, InvalidRequest, NotFound, Forbidden) as exc:
            raise OperationFailed(f"the lease request was refused: {exc}") from None
        return str(answer["id"])

    def release(self, name: str, *, reason: str) -> bool:
        """Release one lease of a job (nothing if it has ended); True if it
        was still open."""
        try:
            lease = self.leases.get(name)
        except NotFound:
            return False
        if lease["state"] not in OPEN or lease["state"] == "returning":
            return False
        self.leases.release(name, Caller(name=lease["owner"], role=Role.USER),
                            reason=reason)
        return True

    def release_all(self, job: str, *, reason: str) -> list[str]:
        """Release every open lease of ``job``; returns their names."""
        released = []
        for lease in self._open_of(job):
            if self.release(lease.name, reason=reason):
                released.append(lease.name)
        return released

    def _open_of(self, job: str) -> list[Any]:
        with self.engine.store.unit() as tx:
            rows = tx.machines.list(LEASE, states=list(OPEN))
        return [r for r in rows if r.attrs.get("job") == job]

    # ------------------------------------------------------------ the pass
    def watch_pass(self) -> WatchReport:
        """Tell jobs what became of their leases (see the module's docstring)."""
        report = WatchReport()
        with self.engine.store.unit() as tx:
            jobs = {r.name: r for r in tx.machines.list(JOB, states=["running", "waiting"])}
            open_leases = tx.machines.list(LEASE, states=list(OPEN))
            wanted = {n for r in jobs.values() for n in
                      [*names_of((r.vars or {}).get("leases")), (r.vars or {}).get("lease")]
                      if n}
            leases = {n: tx.leases.get(n) for n in sorted(wanted)}
        for name, row in jobs.items():
            variables = row.vars or {}
            try:
                self._watch_job(name, row.state, variables, leases, report)
            except CorralError as exc:  # the job moved on meanwhile; the next pass sees it
                log.info("job_lease_watch_skipped", job=name, error=str(exc))
        for lease in open_leases:
            job = lease.attrs.get("job")
            if isinstance(job, str) and job not in jobs and self._ended(job):
                if self.release(lease.name, reason=f"job {job} has ended"):
                    report.released.append(lease.name)
        return report

    def _watch_job(self, name: str, state: str, variables: Mapping[str, Any],
                   leases: Mapping[str, dict[str, Any] | None],
                   report: WatchReport) -> None:
        waiting = variables.get("lease") or None
        for held in names_of(variables.get("leases")):
            lease = leases.get(held)
            if lease is not None and lease["state"] in GONE:
                reason = f"{held} ended ({_how(lease)}) while the job held it"
                if self._tell(name, "lease_lost", held, reason=reason):
                    report.lost.append(held)
                return
            if lease is not None:
                self._heartbeat(lease, report)
        if state != "waiting" or waiting is None:
            return
        lease = leases.get(waiting)
        if lease is None:
            return
        if lease["state"] == "active":
            self._heartbeat(lease, report)
            boards = ", ".join(self.leases.show(waiting)["boards"])
            held = ",".join([*names_of(variables.get("leases")), waiting])
            if self._tell(name, "action_done", waiting,
                          reason=f"{waiting} active: boards {boards} until "
                                 f"{lease['expires_at'].isoformat()}",
                          payload={"leases": held}):
                report.active.append(waiting)
        elif lease["state"] in GONE:
            reason = f"{waiting} ended ({_how(lease)}) before it was active"
            if self._tell(name, "action_failed", waiting, reason=reason,
                          payload={"reason": reason}):
                report.failed.append(waiting)

    def _tell(self, job: str, event: str, lease: str, *, reason: str,
              payload: Mapping[str, Any] | None = None) -> bool:
        """Fire ``event`` at ``job`` if it still waits for or holds ``lease``
        (checked with its row locked); True if fired."""
        with self.engine.transaction() as unit:
            row = unit.lock(JOB, job)
            variables = unit.tx.machines.vars(row.id)
            if event == "lease_lost":
                still = row.state in ("running", "waiting") and \
                    lease in names_of(variables.get("leases"))
            else:
                still = row.state == "waiting" and variables.get("lease") == lease
            if not still:
                return False
            unit.fire(row, event, source="operation", actor=lease, reason=reason,
                      payload=dict(payload or {}))
        log.info("job_lease_news", job=job, lease=lease, job_event=event)
        return True

    def _heartbeat(self, lease: Mapping[str, Any], report: WatchReport) -> None:
        interval = lease.get("heartbeat_s")
        if not interval or lease["state"] != "active":
            return
        last = lease.get("heartbeat_at") or lease.get("activated_at")
        # A third of the interval: two passes may be missed before the lease ends.
        if last is not None and (self.engine.clock() - last).total_seconds() < interval / 3:
            return
        try:
            self.leases.heartbeat(lease["name"], Caller(name=lease["owner"], role=Role.USER))
            report.heartbeats.append(lease["name"])
        except Conflict:
            pass  # it ended meanwhile; the next pass tells the job

    def _ended(self, job: str) -> bool:
        with self.engine.store.unit() as tx:
            row = tx.machines.get(JOB, job)
        return row is None or row.state in FINAL
