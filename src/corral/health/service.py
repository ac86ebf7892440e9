"""The health pass: admit queued checks, judge results, blame shared
equipment and bring it back (docs/health.md).

One pass is one short engine transaction under the lease scheduler's
database lock (both move ready boards, so they never race for one), and it
is level-triggered like the lease pass: what it finds, not what happened,
so a pass missed or killed is made up by the next one. In order:

1. every board in ``judging`` is judged by the rules
   (:mod:`corral.health.judge`) from the result its check reported, its last
   checks and its neighbours' failures; the verdict moves it to ready,
   suspect, failed_health or unknown, and may find equipment degraded (or
   working again);
2. degraded equipment whose backoff is over has one of its boards (the
   canary) checked again; the wait doubles after each probe, up to
   ``health_backoff_max``; once a check through it passes, its boards are
   checked again;
3. a queued board a lease holds goes back to its holder unchecked;
4. proven ready boards due a check (``every_hours``, the burn-in loop) queue;
5. queued boards are admitted oldest first, while fewer than the type's
   share (``max_checking``) are in checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from corral.config import Settings
from corral.engine.core import Engine, Transaction
from corral.engine.events import FireResult
from corral.errors import Unavailable
from corral.health.definitions import EQUIPMENT_STEPS, Definition, Definitions
from corral.health.judge import Evidence, Result, Verdict, judge, result_of
from corral.health.steps import equipment_of
from corral.machines.needs import Needs, check_needs
from corral.names import Role
from corral.store.values import MachineRow, MachineState

log = structlog.get_logger("corral.health")

BOARD = "board"
# The lease scheduler's lock (corral.leases.scheduler.LOCK).
LOCK = "corral-leases"
IN_CHECKS = ("checking", "judging")
# The failed states a power controller's outage leaves boards in, outside checks.
POWER_FAILED = ("failed_power_cycling", "failed_returning")
HEALTH_EVENTS = ("admit", "check_held", "check_passed", "check_suspect", "check_failed",
                 "check_unknown", "recheck", "check_due")
NEEDS = [Needs(service="health", kind=BOARD,
               states=("check_queued", "checking", "judging", "suspect", "unknown",
                       "failed_health", "ready"),
               events=(*HEALTH_EVENTS, "health_check_ok", "health_check_failed", "check"))]
EVENT_OF = {"passed": "check_passed", "suspect": "check_suspect", "failed": "check_failed",
            "unknown": "check_unknown"}


def install(engine: Engine) -> bool:
    """Only the health pass fires the check path's own events; False where
    the board machine has no check path."""
    if BOARD not in engine.machines or \
            "judging" not in engine.machines[BOARD].definition.states:
        return False
    check_needs(engine.machines, NEEDS)
    engine.firing.reserve_events(BOARD, HEALTH_EVENTS, "the health pass fires it "
                                 "(corral board check NAME asks for a check)")
    engine.explainers.setdefault(BOARD, []).append(explain_health)
    return True


def explain_health(engine: Engine, row: Any) -> tuple[str, Any, str | None]:
    """What ``corral board explain`` adds: the rule that decided the board's
    last check, and the equipment it waits for."""
    with engine.store.unit() as tx:
        health = tx.health.board(row.name)
        results = tx.health.results(row.name, limit=1)
        degraded = tx.health.equipment(state="degraded")
    if health is None:
        return "health", None, None
    last = results[0] if results else None
    doc = {"check": health["check_name"], "checked_at": _iso(health["checked_at"]),
           "passed_at": _iso(health["passed_at"]), "rule": health["rule"],
           "loop": health["loop"], "blame": last["blame"] if last else None,
           "equipment": last["equipment"] if last else None}
    sentence = f"Its last health check: {health['rule']}." if health["rule"] else None
    waits = last["equipment"] if last and last["equipment"] in degraded else None
    if waits and row.state == "unknown":
        retry = degraded[waits]["retry_at"]
        doc["waits_for"] = {"equipment": waits, "retry_at": _iso(retry)}
        sentence = (sentence or "") + (f" It waits for {waits}, which is degraded; one of its "
                                       f"boards is checked again at {_iso(retry)}.")
    return "health", doc, sentence


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


class HealthPass:
    """Args:
        engine: runs the board machine.
        settings: the ``health_*`` settings.
        definitions: the health check definitions.
    """

    def __init__(self, engine: Engine, settings: Settings, definitions: Definitions) -> None:
        self.engine = engine
        self.settings = settings
        self.definitions = definitions

    def run_pass(self) -> dict[str, list[str]]:
        """One pass (see the module docstring); what it did, by step."""
        try:
            with self.engine.transaction() as unit:
                unit.tx.lock_named(LOCK)
                report = _Pass(self, unit).run()
        except Unavailable as exc:
            if "lock" not in str(exc):
                raise
            return {"skipped": []}
        if any(report.values()):
            log.info("health_pass", **{k: len(v) for k, v in report.items()})
        return report

    def request(self, name: str, *, loop: int = 0, actor: str, reason: str | None = None,
                role: str = Role.OPERATOR) -> FireResult:
        """See :func:`request_check`."""
        return request_check(self.engine, name, loop=loop, actor=actor, reason=reason,
                             role=role)


def request_check(engine: Engine, name: str, *, loop: int = 0, actor: str,
                  reason: str | None = None, role: str = Role.OPERATOR) -> FireResult:
    """An operator's check of ``name`` (``corral board check``; ``loop``:
    burn-in checks after it, each as soon as the last passed, until one
    fails). The board queues for the health pass.

    Raises:
        UnknownMachine, EventNotAllowed (not ready, suspect, unknown or
        failed), Conflict (a lease holds it): nothing changes.
    """
    with engine.transaction() as unit:
        row = unit.lock(BOARD, name)
        unit.fire(row, "check", source="operator", role=role, actor=actor,
                  reason=reason or (f"burn-in: {loop + 1} checks" if loop
                                    else "checked on demand"))
        # Repaired, or asked for again: its earlier failures no longer count.
        unit.tx.health.put(name, loop=loop, attempt=0,
                           counted_after=unit.tx.health.newest_result())
    return unit.results[0]


class _Pass:
    def __init__(self, health: HealthPass, unit: Transaction) -> None:
        self.settings = health.settings
        self.definitions = health.definitions
        self.unit = unit
        self.tx = unit.tx
        self.now = unit.now
        self.report: dict[str, list[str]] = {
            "judged": [], "probed": [], "returned": [], "due": [], "admitted": []}
        self.degraded = self.tx.health.equipment(state="degraded")

    def fire(self, name: str, event: str, reason: str, payload: Any = None) -> MachineState:
        row = self.unit.lock(BOARD, name)
        return self.unit.fire(row, event, source="operator", role=Role.HEALTH, actor="health",
                              reason=reason, payload=payload)

    def run(self) -> dict[str, list[str]]:
        tx = self.tx
        for board in tx.machines.list(BOARD, states=["judging"]):
            self._judge(board)
        self._power_failures()
        self._probe()
        queued = tx.machines.list(BOARD, states=["check_queued"])
        holds = tx.leases.holds([b.name for b in queued]) if queued else {}
        for board in queued:
            if board.name in holds:
                self.fire(board.name, "check_held", f"held by lease-{holds[board.name][0]}: "
                          f"back to its holder, checked when it is returned")
                self.report["returned"].append(board.name)
        self._due()
        waiting = [b for b in tx.machines.list(BOARD, states=["check_queued"])
                   if b.name not in holds]
        if waiting:
            self._admit(waiting)
        return self.report

    # -- 1. judging
    def _judge(self, board: MachineRow) -> None:
        definition = self.definitions.of(board.name, board.attrs)
        entry = self.tx.history.newest_of(board.id)
        steps = [s.step for s in definition.steps]
        result = result_of(board.name, entry.payload if entry else None,
                           entry.event if entry else "timeout",
                           entry.reason if entry else None, steps)
        if not result.check:
            result = Result(**{**result.__dict__, "check": definition.name})
        verdict = judge(result, self._evidence(result, definition),
                        through=self._through(definition, board))
        health = self.tx.health.board(board.name) or {}
        self.tx.health.record({
            "board": board.name, "check_name": result.check,
            "outcome": "passed" if result.passed else "failed", "decision": verdict.decision,
            "blame": verdict.blame, "step": result.step, "equipment": result.equipment,
            "image": result.image, "reason": result.reason or None, "rule": verdict.rule,
            "history_id": entry.id if entry else None, "at": self.now})
        attempt = 0 if result.passed else int(health.get("attempt") or 0) + 1
        values: dict[str, Any] = {"check_name": result.check, "checked_at": self.now,
                                  "attempt": attempt, "rule": verdict.rule}
        if result.passed:
            values["passed_at"] = self.now
        loop = int(health.get("loop") or 0)
        if loop and verdict.decision != "passed":
            values["loop"] = 0  # a burn-in ends at its first failure
        self.tx.health.put(board.name, **values)
        self._equipment(verdict, result)
        self.fire(board.name, EVENT_OF[verdict.decision], verdict.rule,
                  {"check": result.check, "blame": verdict.blame})
        self.report["judged"].append(board.name)
        if verdict.decision == "passed" and loop:
            self.tx.health.put(board.name, loop=loop - 1)
            self.fire(board.name, "check_due", f"burn-in: {loop} checks to go")

    def _evidence(self, result: Result, definition: Definition) -> Evidence:
        window = self.settings.health_window
        since = self.now - timedelta(seconds=window)
        counted_after = (self.tx.health.board(result.board) or {}).get("counted_after")
        previous = [(r["outcome"], r["blame"]) for r in self.tx.health.results(
            result.board, limit=definition.rules.n, after=counted_after)]
        equipment_failures = image_failures = 0
        if not result.passed and result.equipment:
            equipment_failures = len(self.tx.health.failed_through(result.equipment, since)
                                     | {result.board})
        if not result.passed and result.image and result.after_netboot:
            image_failures = len(self.tx.health.failed_with_image(result.image, since)
                                 - {result.board})
        return Evidence(k=definition.rules.k, n=definition.rules.n, previous=previous,
                        degraded=frozenset(self.degraded), window=window,
                        equipment_failures=equipment_failures, image_failures=image_failures,
                        equipment_threshold=self.settings.health_equipment_threshold,
                        image_threshold=self.settings.health_image_threshold)

    def _through(self, definition: Definition, board: MachineRow) -> list[str]:
        """The shared equipment a passed check of ``board`` went through."""
        found = [equipment_of(step.step, board.attrs) for step in definition.steps
                 if step.step in EQUIPMENT_STEPS]
        return [e for e in found if e]

    def _equipment(self, verdict: Verdict, result: Result) -> None:
        if verdict.degrade:
            backoff = self.settings.health_backoff
            self.tx.health.set_equipment(
                verdict.degrade, state="degraded", since=self.now, backoff_s=backoff,
                retry_at=self.now + timedelta(seconds=backoff),
                reason=f"{result.board} and others failed at {result.step}")
            self.tx.health.reblame(verdict.degrade,
                                   self.now - timedelta(seconds=self.settings.health_window),
                                   verdict.blame)
            self.degraded[verdict.degrade] = {
                "retry_at": self.now + timedelta(seconds=backoff), "backoff_s": backoff}
            log.warning("equipment_degraded", equipment=verdict.degrade, board=result.board)
        elif verdict.decision == "unknown" and result.equipment in self.degraded:
            # A probe failed through it again: the next one waits its whole
            # backoff from now, not from when this one was sent.
            row = self.degraded[result.equipment]
            retry = self.now + timedelta(seconds=int(row.get("backoff_s")
                                                     or self.settings.health_backoff))
            if row.get("retry_at") is None or row["retry_at"] < retry:
                self.tx.health.set_equipment(result.equipment, retry_at=retry)
                row["retry_at"] = retry
        for equipment in verdict.recovered:
            self.tx.health.set_equipment(equipment, state="ok", since=self.now,
                                         retry_at=None, backoff_s=0,
                                         reason=f"a check of {result.board} passed through it")
            self.degraded.pop(equipment, None)
            log.info("equipment_recovered", equipment=equipment, board=result.board)
            for name in self._waiting_for(equipment):
                self.fire(name, "recheck", f"{equipment} works again")
                self.report["probed"].append(name)

    def _power_failures(self) -> None:
        """Boards that failed their power cycle or power-off outside a check
        (a reboot, a lease's return) within the window: where enough of them
        are behind one controller, or it is degraded already, the
        controller is to blame, and they wait as unknown for it."""
        since = self.now - timedelta(seconds=self.settings.health_window)
        failed = [b for b in self.tx.machines.list(BOARD, states=list(POWER_FAILED))
                  if b.state_entered_at >= since]
        behind: dict[str, list[MachineRow]] = {}
        for board in failed:
            equipment = equipment_of("power_cycle", board.attrs)
            if equipment:
                behind.setdefault(equipment, []).append(board)
        for equipment, boards in sorted(behind.items()):
            recent = self.tx.health.failed_through(equipment, since) | {b.name for b in boards}
            if equipment not in self.degraded and \
                    len(recent) < self.settings.health_equipment_threshold:
                continue
            rule = (f"{len(recent)} boards behind {equipment} failed their power commands "
                    f"within {self.settings.health_window} s: {equipment} is degraded, and "
                    f"its boards wait as unknown")
            if equipment not in self.degraded:
                self._equipment(Verdict(decision="unknown", blame="controller", rule=rule,
                                        degrade=equipment),
                                Result(board=boards[0].name, check="", passed=False,
                                       step=boards[0].state.removeprefix("failed_")))
            for board in boards:
                self.tx.health.record({
                    "board": board.name, "check_name": "power", "outcome": "failed",
                    "decision": "unknown", "blame": "controller", "step": "power_cycle",
                    "equipment": equipment, "image": None, "reason": board.state,
                    "rule": rule, "history_id": None, "at": self.now})
                self.tx.health.put(board.name, checked_at=self.now, rule=rule)
                self.fire(board.name, "check_unknown", rule, {"blame": "controller"})
                self.report["judged"].append(board.name)

    # -- 2. degraded equipment
    def _waiting_for(self, equipment: str, states: Sequence[str] = ("unknown",)
                     ) -> list[str]:
        """The boards in ``states`` (unknown: waiting for it) whose last check
        failed through ``equipment``."""
        found = []
        for board in self.tx.machines.list(BOARD, states=list(states)):
            last = self.tx.health.results(board.name, limit=1)
            if last and last[0]["equipment"] == equipment:
                found.append(board.name)
        return found

    def _probe(self) -> None:
        for equipment, row in list(self.degraded.items()):
            retry = row.get("retry_at")
            if retry is None or retry > self.now:
                continue
            if self._waiting_for(equipment, ("check_queued", *IN_CHECKS)):
                # The last probe (or another check) through it is under way:
                # its result decides, and no second canary is sent meanwhile.
                continue
            boards = self._waiting_for(equipment)
            if not boards and self._waiting_for(equipment, ("suspect",)):
                continue  # a suspect board's re-check comes by itself
            if not boards:
                # Nothing waits for it any more (operators moved them): forget it.
                self.tx.health.set_equipment(equipment, state="ok", since=self.now,
                                             retry_at=None, backoff_s=0,
                                             reason="no board waits for it")
                continue
            backoff = min(max(1, int(row.get("backoff_s") or 1)) * 2,
                          self.settings.health_backoff_max)
            self.tx.health.set_equipment(equipment, retry_at=self.now + timedelta(
                seconds=backoff), backoff_s=backoff)
            canary = boards[0]
            self.fire(canary, "recheck", f"{equipment} is degraded: {canary} is checked to "
                      f"see whether it is back (next probe in {backoff} s)")
            self.report["probed"].append(canary)

    # -- 4. due checks
    def _due(self) -> None:
        due: set[str] = set()
        for board in self.tx.health.looping():
            due.add(board)
        hours = {d.name: d.rules.every_hours for d in self.definitions.checks
                 if d.rules.every_hours}
        if hours:
            oldest = self.now - timedelta(hours=min(hours.values()))
            due.update(self.tx.health.passed_before(oldest))
        if not due:
            return
        ready = {b.name: b for b in self.tx.machines.list(BOARD, states=["ready"],
                                                          names=sorted(due))}
        holds = self.tx.leases.holds(list(ready)) if ready else {}
        health = self.tx.health.boards(list(ready))
        for name, board in ready.items():
            if name in holds:
                continue
            definition = self.definitions.of(name, board.attrs)
            every = definition.rules.every_hours
            passed = health.get(name, {}).get("passed_at")
            looping = int(health.get(name, {}).get("loop") or 0)
            if looping:
                self.tx.health.put(name, loop=looping - 1)
                self.fire(name, "check_due", f"burn-in: {looping} checks to go")
            elif every and passed and passed <= self.now - timedelta(hours=every):
                self.fire(name, "check_due", f"its last check passed {every} h ago or more "
                          f"({definition.name}: every {every} h)")
            else:
                continue
            self.report["due"].append(name)

    # -- 5. admission
    def _admit(self, waiting: list[MachineRow]) -> None:
        everyone = self.tx.machines.list(BOARD)
        of = {b.name: self.definitions.of(b.name, b.attrs).name for b in everyone
              if b.state != "retired"}
        size: dict[str, int] = {}
        busy: dict[str, int] = {}
        for b in everyone:
            if b.name in of:
                size[of[b.name]] = size.get(of[b.name], 0) + 1
                if b.state in IN_CHECKS:
                    busy[of[b.name]] = busy.get(of[b.name], 0) + 1
        rules = {d.name: d.rules for d in self.definitions.checks}
        for board in sorted(waiting, key=lambda b: (b.state_entered_at, b.name)):
            check = of.get(board.name)
            if check is None:
                continue
            share = rules[check].max_checking if check in rules else _default_share()
            cap = max(1, math.floor(share * size[check]))
            if busy.get(check, 0) >= cap:
                continue
            busy[check] = busy.get(check, 0) + 1
            newest = self.tx.history.newest_of(board.id)
            if newest is not None and newest.event == "check":
                # An operator's check, however it was fired (request_check,
                # the generic event route, the console): the board's earlier
                # failures no longer count.
                self.tx.health.put(board.name, counted_after=self.tx.health.newest_result())
            self.fire(board.name, "admit", f"{check}: {busy[check]} of at most {cap} boards "
                      f"in checks", {"check": check})
            self.report["admitted"].append(board.name)


def _default_share() -> float:
    from corral.health.definitions import DEFAULT

    return DEFAULT.rules.max_checking


def summary(engine: Engine, since: datetime) -> Mapping[str, Any]:
    """What /metrics exports: checks by (check, decision, blame), pass rates
    per board and per check since ``since``, and the degraded equipment."""
    with engine.store.unit() as tx:
        return {"tally": tx.health.tally(), "boards": tx.health.pass_rates(
            by="board", since=since), "checks": tx.health.pass_rates(by="check_name",
                                                                     since=since),
                "degraded": sorted(tx.health.equipment(state="degraded")),
                "by_check": tx.health.by_check(("suspect", "unknown", "failed_health"))}
