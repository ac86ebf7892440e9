"""Submitting, scheduling and running jobs.

``submit`` validates the spec (the schema check: a job id comes back at
once), stores it as submitted beside its internal form, and creates the job
machine, queued, in one transaction. ``dispatch_pass`` gives free pools to
queued jobs, highest priority first, then oldest: one transaction, under a
lock that lets one scheduler at a time decide (the store's named lock: an
advisory lock on PostgreSQL, ``GET_LOCK`` on MariaDB; SQLite serializes
writers anyway), so priorities hold however many engines run. The job
machine's operations (``validate_dispatch``, ``start_action``,
``finish_job``) and the pool machine's ``notify_job`` are run by the outbox
worker like any other operation; a job's leases (``leaseAction``) are
:mod:`corral.jobs.leasing`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from corral.engine.core import Engine, FireResult
from corral.errors import Conflict, CorralError, EventNotAllowed, NotFound, UnknownMachine
from corral.jobs import maize, versions
from corral.jobs.actions import TYPES
from corral.jobs.spec import JobSpec, duration_text
from corral.machines.needs import Needs, check_needs
from corral.operations.base import OperationContext, OperationFailed, Reported
from corral.pools.service import PoolService

if TYPE_CHECKING:
    from corral.jobs.leasing import JobLeases
    from corral.mo.client import MoClient

KIND = "job"
# One scheduler decides at a time (the store's named lock, until the pass commits).
SCHEDULER_LOCK = "corral_scheduler"
FINAL = ("complete", "incomplete", "canceled")
RESERVED_EVENTS = ("assign", "action_done", "action_failed")
# What this service names in code (checked against job.yaml and pool.yaml at
# start-up): the scheduler's queue, a waiting action, the final states, and the
# pool states an override job watches.
NEEDS = (
    Needs(service="jobs", kind=KIND,
          states=("queued", "running", "waiting", *FINAL),
          events=("queue", "cancel", *RESERVED_EVENTS)),
    Needs(service="jobs", kind="pool", states=("overriding", "rolling_out", "overridden")),
)


def reserve_job_events(engine: Engine) -> None:
    """Events only the scheduler, the pools and ``signal`` fire; and what
    ``corral job explain`` adds (the job's leases)."""
    if KIND in engine.machines:
        engine.firing.reserve_events(KIND, RESERVED_EVENTS, "the scheduler, the pools and `corral "
                              "job signal` send it")
        from corral.jobs.leasing import explain_leases

        explainers = engine.explainers.setdefault(KIND, [])
        if explain_leases not in explainers:
            explainers.append(explain_leases)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


class JobService:
    def __init__(self, engine: Engine, *, default_ttl: int = 43200) -> None:
        self.engine = engine
        self.pools = PoolService(engine, default_ttl=default_ttl)
        engine.machine(KIND)
        check_needs(engine.machines, NEEDS)
        reserve_job_events(engine)

    # -------------------------------------------------------------- submitting

    def submit(self, text: str, *, actor: str) -> FireResult:
        """Validate and queue a spec; returns the job machine's creation.

        Raises:
            SpecError: the spec's problems, each with its path; nothing is stored.
        """
        submitted = versions.load(text)
        spec = submitted.spec
        with self.engine.transaction() as unit:
            name = unit.tx.jobs.insert({
                "api_version": submitted.api_version,
                "format": submitted.format, "spec_text": submitted.text,
                "spec": spec.to_json(), "job_name": spec.job_name, "priority": spec.priority,
                "fabric": spec.fabric, "submitted_at": unit.now, "submitted_by": actor,
            })
            row = unit.create(KIND, name, {"job_name": spec.job_name,
                                           "priority": spec.priority,
                                           "fabric": spec.fabric}, actor=actor,
                              reason=f"submitted ({submitted.api_version})")
            unit.fire(row, "queue", source="operator", actor=actor)
        return unit.results[-1]

    def submit_maize(self, text: str, *, actor: str, fabric: str | None = None) -> FireResult:
        """A Maize snapshot document as a one-stage OS override job."""
        _, doc = versions.parse_text(text)
        job = maize.job_from_maize(doc, fabric=fabric)
        return self.submit(versions.dumps(job, "yaml"), actor=actor)

    # -------------------------------------------------------------- reading

    def record(self, name: str) -> dict[str, Any]:
        """The stored job: spec as submitted and its internal form, failure comment.

        Raises:
            UnknownMachine.
        """
        with self.engine.store.unit() as tx:
            record = tx.jobs.get(name)
        if record is None:
            raise UnknownMachine(KIND, name)
        return record

    def spec(self, name: str) -> JobSpec:
        return JobSpec.from_json(self.record(name)["spec"])

    def describe(self, name: str, role: str = "admin") -> dict[str, Any]:
        """The job machine (as ``role`` sees it) plus its spec's name, priority,
        progress and outcome."""
        doc = self.engine.describe(self.engine.get(KIND, name), role)
        record = self.record(name)
        spec = JobSpec.from_json(record["spec"])
        variables = doc.get("vars", {})
        from corral.jobs.leasing import leases_of

        current = None
        if "stage" in variables:
            stage = spec.stages[variables["stage"]]
            action = stage.actions[variables["action"]]
            current = {"stage": stage.name, "action": action.name, "type": action.type,
                       "attempt": variables.get("attempt")}
        return doc | {"job_name": record["job_name"], "priority": record["priority"],
                      "fabric": record["fabric"], "api_version": record["api_version"],
                      "submitted_at": record["submitted_at"],
                      "submitted_by": record["submitted_by"],
                      "pool": variables.get("pool"), "current": current,
                      "leases": leases_of(self.engine, variables),
                      "failure_comment": record["failure_comment"],
                      "finished_at": record["finished_at"]}

    # -------------------------------------------------------------- users

    def cancel(self, name: str, *, actor: str, reason: str | None = None) -> FireResult:
        """Cancel a job that has not ended; its pools are released.

        Raises:
            UnknownMachine; EventNotAllowed: the job already ended.
        """
        return self.engine.fire(KIND, name, "cancel", source="operator", actor=actor,
                                reason=reason or "canceled")

    def signal(self, name: str, event: str, *, actor: str) -> FireResult:
        """Send a named event to a job waiting for it (``waitForEventAction``).

        Raises:
            UnknownMachine; Conflict: the job is not waiting for that event.
        """
        spec = self.spec(name)
        with self.engine.transaction() as unit:
            row = unit.lock(KIND, name)
            variables = unit.tx.machines.vars(row.id)
            awaited = None
            if row.state == "waiting" and "stage" in variables:
                action = spec.stages[variables["stage"]].actions[variables["action"]]
                awaited = TYPES[action.type].awaited_event(action.params)
            if awaited != event:
                waiting = f"it waits for event {awaited!r}" if awaited else \
                    f"it is {row.state} and waits for no event"
                raise Conflict(f"job {name} is not waiting for event {event!r}: {waiting}")
            unit.fire(row, "action_done", source="operator", actor=actor,
                      reason=f"event {event}", payload={"event": event})
        return unit.results[-1]

    # -------------------------------------------------------------- scheduling

    def dispatch_pass(self, *, limit: int = 200) -> list[tuple[str, str]]:
        """Give free pools to queued jobs, highest priority first, then oldest.

        Returns (job, pool) for every assignment made.
        """
        assigned: list[tuple[str, str]] = []
        with self.engine.transaction() as unit:
            unit.tx.lock_named(SCHEDULER_LOCK)
            queue = unit.tx.jobs.queued(kind=KIND, state="queued", limit=limit)
            exhausted: set[str | None] = set()
            for name, fabric in queue:
                if fabric in exhausted or None in exhausted:
                    continue
                taken = self.pools.take_free(unit, name, fabric=fabric, actor="scheduler")
                if taken is None:
                    exhausted.add(fabric)
                    continue
                row = unit.lock(KIND, name)
                unit.fire(row, "assign", source="operator", actor="scheduler",
                          reason=f"pool {taken}", payload={"pool": taken})
                assigned.append((name, taken))
        return assigned


class JobNotWaitingYet(Exception):
    """Transient: a pool's news arrived before its job started waiting for it."""


class _Run:
    """What an action may use while it starts (see ``RunContext``)."""

    def __init__(self, service: JobService, mo: MoClient | None, job: str, pool: str | None,
                 ttl: int, leases: JobLeases | None = None) -> None:
        self.service, self.mo, self.job, self.pool, self.ttl = service, mo, job, pool, ttl
        self.leases = leases
        # The action being started (set by start_action): for a lease's request.
        self.where, self.attempt, self.wait_seconds, self.purpose = "", 1, 0, ""

    def override(self, os_version: str) -> None:
        if self.pool is None:
            raise OperationFailed("the job holds no pool")
        try:
            self.service.pools.override(self.pool, job_run_id=self.job, os_version=os_version,
                                        ttl_seconds=self.ttl, actor=self.job)
        except EventNotAllowed as exc:
            # A retried action whose rollout of the same version is still under
            # way: wait for that one instead of failing.
            pool = self.service.engine.get("pool", self.pool)
            if pool.state in ("overriding", "rolling_out") and \
                    (pool.vars or {}).get("os_version") == os_version:
                return
            raise OperationFailed(f"cannot start the override of pool {self.pool}: {exc}"
                                  ) from None
        except CorralError as exc:
            raise OperationFailed(f"cannot start the override of pool {self.pool}: {exc}"
                                  ) from None

    def lease_problem(self, params: Mapping[str, Any]) -> str | None:
        if self.leases is None:
            return "this lab leases no boards (its statemachines/ has no lease machine)"
        return self.leases.problem(params)

    def request_lease(self, params: Mapping[str, Any]) -> str:
        if self.leases is None:
            raise OperationFailed("this lab leases no boards (no lease machine)")
        owner = self.service.record(self.job)["submitted_by"] or self.job
        return self.leases.request(job=self.job, owner=owner, params=params,
                                   action=self.where, attempt=self.attempt,
                                   wait_seconds=self.wait_seconds, purpose=self.purpose)

    def release_lease(self, lease: str) -> None:
        if self.leases is not None:
            self.leases.release(lease, reason=f"{self.where} of job {self.job} did not get "
                                f"its lease in time (attempt {self.attempt})")

    def mo_reachable(self) -> str | None:
        if self.mo is None:
            return "no MO is configured (setting mo_target)"
        from corral.mo.client import MoError

        try:
            self.mo.applied_versions(self.pool or "")
        except MoError as exc:
            return f"MO at {self.mo.target} is not usable: {exc}"
        return None


class JobOperations:
    """The job machine's operations, and the pool machine's ``notify_job``."""

    KINDS = ("validate_dispatch", "start_action", "finish_job", "notify_job")

    def __init__(self, service: JobService, mo: MoClient | None,
                 leases: JobLeases | None = None) -> None:
        self.service = service
        self.engine = service.engine
        self.mo = mo
        self.leases = leases

    def handlers(self) -> dict[str, Any]:
        return {kind: getattr(self, kind) for kind in self.KINDS}

    def _run(self, ctx: OperationContext, spec: JobSpec) -> _Run:
        now = self.engine.clock()
        deadline = ctx.vars.get("job_deadline")
        remaining = spec.job_timeout_seconds
        if isinstance(deadline, str):
            remaining = int((datetime.fromisoformat(deadline) - now).total_seconds())
        # The override outlives the job by an hour, so that MO never reverts a
        # pool while its job still runs.
        return _Run(self.service, self.mo, ctx.name, ctx.vars.get("pool"),
                    max(remaining, 0) + 3600, self.leases)

    def validate_dispatch(self, ctx: OperationContext) -> Mapping[str, Any]:
        """The lab-dependent checks, with the pool known (LAVA's dispatch validation)."""
        spec = self.service.spec(ctx.name)
        pool = ctx.vars.get("pool")
        problems = []
        if not isinstance(pool, str):
            problems.append("the job holds no pool")
        else:
            try:
                attrs = self.engine.get("pool", pool).attrs
                if spec.fabric is not None and attrs.get("fabric") != spec.fabric:
                    problems.append(f"pool {pool} is not in fabric {spec.fabric}")
            except NotFound:
                problems.append(f"pool {pool} does not exist")
        run = self._run(ctx, spec)
        checked: set[str] = set()
        for s, a, action in spec.actions():
            kind = TYPES[action.type]
            key = kind.dispatch_key(action.params)
            if key in checked or problems:
                continue
            checked.add(key)
            problem = kind.check_dispatch(action.params, run)
            if problem:
                problems.append(f"stages[{s}].actions[{a}] ({action.name}): {problem}")
        if problems:
            raise OperationFailed("dispatch validation failed: " + "; ".join(problems))
        deadline = self.engine.clock() + timedelta(seconds=spec.job_timeout_seconds)
        return {"job_deadline": _iso(deadline)}

    def start_action(self, ctx: OperationContext) -> Mapping[str, Any] | Reported:
        """Start the next action, retry the current one, or end the job."""
        spec = self.service.spec(ctx.name)
        order = spec.actions()
        now = self.engine.clock()
        # Set at dispatch; a job an operator forced past dispatch starts its clock now.
        job_deadline = (datetime.fromisoformat(ctx.vars["job_deadline"])
                        if "job_deadline" in ctx.vars
                        else now + timedelta(seconds=spec.job_timeout_seconds))
        entered_by = ctx.payload.get("event")
        position = (ctx.vars.get("stage"), ctx.vars.get("action"))
        index = next((i for i, (s, a, _) in enumerate(order) if (s, a) == position), None)
        attempt = int(ctx.vars.get("attempt", 1))
        failure = None
        if index is None:
            index, attempt = 0, 1
        else:
            s, a, current = order[index]
            where = f"stages[{s}].actions[{a}] ({current.name})"
            kind = TYPES[current.type]
            if now >= job_deadline:
                raise OperationFailed(f"job timeout: {duration_text(spec.job_timeout_seconds)} "
                                      f"passed during {where}")
            if entered_by == "action_done" or (entered_by == "timeout"
                                               and kind.timeout_is_success):
                index, attempt = index + 1, 1
            elif entered_by == "timeout":
                failure = (f"{where} timed out after "
                           f"{duration_text(spec.action_timeout(current))}")
            elif entered_by == "action_failed":
                payload = ctx.payload.get("event_payload") or {}
                failure = f"{where} failed: {payload.get('reason', 'no reason given')}"
            if failure is not None:
                # Undo what the failed attempt left (a lease still queued).
                run = self._run(ctx, spec)
                run.where, run.attempt = where, attempt
                kind.stop(current.params, run, ctx.vars)
                if attempt > current.failure_retry:
                    retries = current.failure_retry
                    raise OperationFailed(failure + (f" (after {retries} "
                                          f"retr{'y' if retries == 1 else 'ies'})"
                                          if retries else ""))
                attempt += 1
        if index >= len(order):
            return Reported("complete", {"actions": len(order)})
        s, a, action = order[index]
        kind = TYPES[action.type]
        wait = kind.wait_seconds(action.params) or spec.action_timeout(action)
        deadline = min(now + timedelta(seconds=wait), job_deadline)
        run = self._run(ctx, spec)
        run.where, run.attempt = f"stages[{s}].actions[{a}]", attempt
        run.wait_seconds = int((deadline - now).total_seconds())
        run.purpose = (f"job {ctx.name} ({spec.job_name}): {spec.stages[s].name} / "
                       f"{action.name}, attempt {attempt}")
        started = kind.start(action.params, run) or {}
        return {"stage": s, "action": a, "attempt": attempt, "deadline": _iso(deadline),
                "name": action.name, "type": action.type,
                "lease": str(started.get("lease", ""))}

    def finish_job(self, ctx: OperationContext) -> Mapping[str, Any]:
        """Release every pool and lease of the job and record how it ended."""
        released = self.service.pools.release_all(ctx.name, actor=ctx.name,
                                                  reason=f"job {ctx.name} {ctx.payload['state']}")
        leases = (self.leases.release_all(ctx.name, reason=f"job {ctx.name} "
                                          f"{ctx.payload['state']}")
                  if self.leases is not None else [])
        comment = None
        if ctx.payload.get("state") in ("incomplete", "canceled"):
            entries = self.engine.history(KIND, ctx.name, limit=5)
            entry = next((e for e in entries if e.to_state == ctx.payload["state"]
                          and e.from_state != e.to_state), None)
            if entry is not None:
                comment = entry.reason or (f"{entry.event} in {entry.from_state}"
                                           if entry.event != "timeout" else
                                           f"{entry.from_state} timed out")
        with self.engine.store.unit() as tx:
            tx.jobs.finish(ctx.name, comment=comment, now=self.engine.clock())
        return {"released": released, "leases_released": leases}

    def notify_job(self, ctx: OperationContext) -> Mapping[str, Any]:
        """A pool reached overridden or failed_override: tell its job's waiting
        override action."""
        job = ctx.vars.get("job_run_id")
        state = ctx.payload.get("state")
        if not isinstance(job, str):
            return {"note": "no job holds the pool"}
        try:
            spec = self.service.spec(job)
        except UnknownMachine:
            return {"note": f"{job} is not a Corral job"}
        with self.engine.transaction() as unit:
            row = unit.lock(KIND, job)
            variables = unit.tx.machines.vars(row.id)
            if row.state == "running" and variables.get("pool") == ctx.name:
                # The job has asked for the override but not yet recorded that it
                # waits for it: try again shortly (the worker retries with backoff).
                raise JobNotWaitingYet(f"job {job} is still starting its action")
            if row.state != "waiting" or variables.get("pool") != ctx.name:
                return {"note": f"job {job} is {row.state}; not waiting on this pool"}
            action = spec.stages[variables["stage"]].actions[variables["action"]]
            if action.type != "osOverrideAction":
                return {"note": f"job {job} is not running an override"}
            if state == "overridden":
                unit.fire(row, "action_done", source="operation", actor=ctx.name,
                          reason=f"pool {ctx.name} overridden")
            else:
                unit.fire(row, "action_failed", source="operation", actor=ctx.name,
                          reason=f"pool {ctx.name} ended in {state}",
                          payload={"reason": f"pool {ctx.name} ended in {state}"})
        return {"job": job, "told": state}
