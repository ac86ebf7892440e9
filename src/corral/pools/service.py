"""Pools: who holds which pool, and starting OS overrides (docs/pools.md).

Nothing keeps ``SELECT ... FOR UPDATE`` on the assignment open across the
whole MO call and poll. Every step is one short transaction: lock the
pool machine's row, check and change ``pool_assignments``, fire the pool's
event, commit. The MO calls run later, as outbox operations, with no lock
held; the pool machine's state is what keeps a second override out while one
runs (only ``assigned`` and ``overridden`` accept ``override``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from corral.engine.core import Engine, FireResult, Transaction
from corral.errors import Conflict, DuplicateKey, InvalidRequest
from corral.machines.needs import Needs, check_needs
from corral.names import FABRIC_NAME, JOB_RUN_ID
from corral.store.values import Assignment, MachineState

KIND = "pool"
FLEET_NAME = "testbed-cert-pool-{index}-{fabric}"
RAMP_CLASS = "CERTIFICATION"
JOB_RE = JOB_RUN_ID.regex
FABRIC_RE = FABRIC_NAME.regex
# Events that change pool_assignments too, or need its check first.
RESERVED_EVENTS = ("assign", "release", "override")
# What this service names in code (checked against pool.yaml at start-up).
NEEDS = Needs(service="pools", kind=KIND, states=("idle",), events=RESERVED_EVENTS)


@dataclass(frozen=True, kw_only=True)
class Held:
    """What an acquire did: ``pools`` the job now holds (``new``: just taken)."""

    job_run_id: str
    pools: tuple[str, ...]
    new: tuple[str, ...]


def check_job(job_run_id: str) -> str:
    if not isinstance(job_run_id, str) or not JOB_RE.match(job_run_id):
        raise InvalidRequest(f"job run id must be 1-64 letters, digits, '.', '_', ':' or '-', "
                             f"not {job_run_id!r}")
    return job_run_id


def check_fabric(fabric: str) -> str:
    if not isinstance(fabric, str) or not FABRIC_RE.match(fabric):
        raise InvalidRequest(f"fabric must be lowercase letters, digits and '-' (at most 63), "
                             f"not {fabric!r}")
    return fabric


def reserve_pool_events(engine: Engine) -> None:
    """``assign`` and ``release`` move an assignment row and ``override`` must check
    the holder first: only this service fires them."""
    if KIND in engine.machines:
        engine.firing.reserve_events(KIND, RESERVED_EVENTS, "use `corral pool acquire`, "
                              "`corral pool override` or `corral pool release`")


class PoolService:
    """Args:
        engine: the engine running the ``pool`` machine.
        default_ttl: seconds an override lasts at MO when none is given.
    """

    def __init__(self, engine: Engine, *, default_ttl: int = 43200) -> None:
        self.engine = engine
        self.default_ttl = default_ttl
        engine.machine(KIND)
        check_needs(engine.machines, [NEEDS])
        reserve_pool_events(engine)

    # -------------------------------------------------------------- fleet

    def create_fleet(self, fabric: str, count: int, *, actor: str) -> list[FireResult]:
        """Create ``testbed-cert-pool-{1..count}-{fabric}`` (rampClass CERTIFICATION);
        pools that exist keep their state. Returns the created ones."""
        check_fabric(fabric)
        if not 1 <= count <= 1000:
            raise InvalidRequest(f"count must be between 1 and 1000, not {count}")
        inventory = {FLEET_NAME.format(index=i, fabric=fabric):
                     {"fabric": fabric, "rampClass": RAMP_CLASS} for i in range(1, count + 1)}
        return self.engine.import_machines(KIND, inventory, actor=actor,
                                           reason=f"fleet for fabric {fabric}")

    def assignments(self, job_run_id: str | None = None) -> list[Assignment]:
        with self.engine.store.unit() as tx:
            return tx.pools.assignments(job_run_id=job_run_id)

    # -------------------------------------------------------------- acquire / release

    def acquire(self, job_run_id: str, pool: str, *, actor: str) -> Held:
        """Take ``pool`` for the job; taking a pool the job already holds is fine.

        Raises:
            UnknownMachine; Conflict: another job holds it, or its state (offline,
            failed) does not let it be assigned. Nothing changes then.
        """
        check_job(job_run_id)
        with self._unit() as unit:
            row = unit.lock(KIND, pool)
            taken = self._take(unit, row, job_run_id, actor)
        return Held(job_run_id=job_run_id, pools=(pool,), new=(pool,) if taken != row else ())

    def acquire_any(self, job_run_id: str, *, count: int = 1, fabric: str | None = None,
                    actor: str) -> Held:
        """Take ``count`` idle pools (of ``fabric``) that no job holds, all or none.

        Pools another acquirer has locked right now are skipped, so racing jobs
        take different pools instead of waiting on each other.

        Raises:
            Conflict: fewer than ``count`` pools are free; nothing was taken.
        """
        check_job(job_run_id)
        if fabric is not None:
            check_fabric(fabric)
        if not 1 <= count <= 1000:
            raise InvalidRequest(f"count must be between 1 and 1000, not {count}")
        with self._unit() as unit:
            rows = unit.tx.pools.lock_idle(kind=KIND, state="idle",
                                     attrs={"fabric": fabric} if fabric else {}, limit=count)
            if len(rows) < count:
                where = f" in fabric {fabric}" if fabric else ""
                raise Conflict(f"job {job_run_id} needs {count} pool(s){where}; only "
                               f"{len(rows)} free now; nothing was taken")
            for row in rows:
                self._take(unit, row, job_run_id, actor)
        names = tuple(r.name for r in rows)
        return Held(job_run_id=job_run_id, pools=names, new=names)

    def take_free(self, unit: Transaction, job_run_id: str, *, fabric: str | None, actor: str
                  ) -> str | None:
        """Inside the caller's unit: take one idle pool (of ``fabric``) that no job
        holds for the job; returns its name, or None when none is free."""
        rows = unit.tx.pools.lock_idle(kind=KIND, state="idle",
                                 attrs={"fabric": fabric} if fabric else {}, limit=1)
        if not rows:
            return None
        self._take(unit, rows[0], job_run_id, actor)
        return rows[0].name

    def release_all(self, job_run_id: str, *, actor: str, reason: str | None = None
                    ) -> list[str]:
        """Free every pool the job holds (whatever their state); returns their names.

        Pools go back to ``idle``; a failed pool keeps its state for an operator.
        """
        check_job(job_run_id)
        with self._unit() as unit:
            held = [a.pool for a in unit.tx.pools.assignments(job_run_id=job_run_id)]
            if not held:
                return []
            rows = unit.tx.machines.lock_many([(KIND, name) for name in held])
            # Re-read under the locks: only this job can drop its rows, but
            # another release of the same job may have raced this one.
            still = {a.pool for a in unit.tx.pools.assignments(job_run_id=job_run_id)}
            released = []
            for row in rows:
                if row.name not in still:
                    continue
                machine = self.engine.machine(KIND)
                if "release" in machine.allowed_events(row.state):
                    unit.fire(row, "release", source="operator", actor=actor,
                              reason=reason or f"released by job {job_run_id}",
                              payload={"job_run_id": job_run_id})
                released.append(row.name)
            unit.tx.pools.unassign(released, job_run_id)
        return released

    # -------------------------------------------------------------- overrides

    def override(self, pool: str, *, job_run_id: str, os_version: str,
                 ttl_seconds: int | None = None, actor: str) -> FireResult:
        """Start an OS override of ``pool`` for the job, taking the pool first if
        it is free. MO is called afterwards by the ``set_os_override`` operation.

        Raises:
            Conflict: another job holds the pool, or an override is already
            running on it (its state is not ``assigned`` or ``overridden``).
            InvalidRequest: a malformed version or TTL.
        """
        check_job(job_run_id)
        if not isinstance(os_version, str) or not os_version.strip() or len(os_version) > 200:
            raise InvalidRequest(f"os version must be a non-empty string of at most 200 "
                                 f"characters, not {os_version!r}")
        ttl = self.default_ttl if ttl_seconds is None else ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise InvalidRequest(f"ttl must be a whole number of seconds > 0, not {ttl!r}")
        with self._unit() as unit:
            row = self._take(unit, unit.lock(KIND, pool), job_run_id, actor)
            unit.fire(row, "override", source="operator", actor=actor,
                      reason=f"job {job_run_id}: OS {os_version}",
                      payload={"os_version": os_version, "ttl_seconds": ttl,
                               "job_run_id": job_run_id})
        return unit.results[-1]

    # -------------------------------------------------------------- internals

    @contextmanager
    def _unit(self) -> Iterator[Transaction]:
        """:meth:`Engine.transaction`, turning a primary-key race into a clear Conflict."""
        try:
            with self.engine.transaction() as unit:
                yield unit
        except DuplicateKey:
            raise Conflict("another job took the pool at the same moment; nothing was "
                           "changed, try again") from None

    def _take(self, unit: Transaction, row: MachineState, job_run_id: str, actor: str
              ) -> MachineState:
        """Make ``job_run_id`` the holder of the locked pool ``row``; returns the row
        as it is afterwards (the same object when the job already held it)."""
        holder = unit.tx.pools.holder(row.name)
        if holder is not None and holder != job_run_id:
            raise Conflict(f"pool {row.name!r} is held by job {holder}")
        if holder is None:
            unit.tx.pools.assign(row.name, job_run_id, unit.now)
        if row.state == "idle" or holder is None:
            # Fires only from idle; any other state refuses, naming what it accepts.
            return unit.fire(row, "assign", source="operator", actor=actor,
                             reason=f"assigned to job {job_run_id}",
                             payload={"job_run_id": job_run_id})
        return row
