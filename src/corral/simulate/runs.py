"""Simulated test runs that lease boards over HTTP, as a lab's CI does.

``corral simulate runs --owners alice,bob --url URL`` plays a few owners, each
with its own ``user`` token, each keeping ``parallel`` test runs going at once
through :mod:`corral.client` (real HTTP, like any test run). A run asks for one
or two boards by a selector on the simulated lab's labels and facts
(``examples/simlab.yaml``), with a short duration and a heartbeat; waits in the
queue until its lease is active; holds the boards for a while, heartbeating
with the lease's own token and firing a holder's ``reboot`` at one of them; and
releases the lease. Now and then (seeded, at ``forget_rate``) a run forgets to
heartbeat, so that its lease ends by heartbeat loss while it still thinks it
holds the boards, and its late reboot is refused (fencing); and now and then
(``abandon_rate``) a run walks away from its lease without a word, so that the
lease ends at its expiry.

Owners together ask for more boards than the lab has free, so a queue forms
and the fair share decides who goes next (``corral lease list``, ``corral lease
explain``). Stopping (Ctrl-C, SIGTERM, ``seconds``) releases every lease the
runs still hold or wait for, abandoned ones included.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from corral.client import ENDED, Corral, Lease
from corral.errors import AuthError, Conflict, CorralError, Unavailable

log = structlog.get_logger("corral.simulate")

# What a run asks for: selectors on examples/simlab.yaml's rack labels and the
# boards' arch, overlapping so that owners compete for the same boards.
WANTS = (
    ("arch=arm64", "kernel smoke on arm64"),
    ("rack=r1", "rack r1 firmware update"),
    ("rack=r2,arch!=armhf", "rack r2 network soak"),
    ("arch in (amd64,arm64),rack=r1", "installer regression"),
    ("arch=amd64", "amd64 boot test"),
)
# The holder's event every run fires at one of its boards (board.yaml's
# `reboot`, `by: holder`, from `leased`): it comes back held.
HOLDER_EVENT = "reboot"
# How a lease the runs gave back says it ended (a queued one is cancelled).
RELEASED = ("released", "cancelled")


@dataclass(frozen=True, kw_only=True)
class RunBehaviour:
    """How the simulated runs behave. Times are seconds."""

    # Runs each owner keeps going at once. Two owners of 8 runs of 1-2 boards
    # ask for ~24 boards of a 20-board lab whose boards also spend ~30 s on
    # their return path: a queue forms within the first minute.
    parallel: int = 8
    hold_min: float = 8.0
    hold_max: float = 20.0
    # The lease's heartbeat interval (the API's minimum is 5 s); a run beats
    # every third of it, so one lost request does not end the lease.
    heartbeat: int = 6
    forget_rate: float = 0.1
    abandon_rate: float = 0.05
    # An abandoned lease has no heartbeat: it ends at its expiry, this long
    # after it became active.
    abandon_duration: int = 15
    # A run gives up (its lease is cancelled) after waiting this long.
    wait_timeout: int = 180
    # Share of runs whose boards are only power cycled on return, not reimaged.
    power_cycle_rate: float = 0.3
    poll: float = 1.0
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """One run: what it asks for and how it behaves (from its seeded random)."""

    selector: str
    count: int
    purpose: str
    duration: int
    heartbeat: int | None
    hold: float
    forgetful: bool
    abandon: bool
    on_return: str

    def request(self) -> dict[str, Any]:
        """The lease request's body (less ``wait_timeout``)."""
        return {"selector": self.selector, "count": self.count, "duration": self.duration,
                "heartbeat": self.heartbeat, "on_return": self.on_return,
                "purpose": self.purpose}


def plan_run(rng: random.Random, behaviour: RunBehaviour) -> RunPlan:
    """A run's plan, drawn from ``rng``: pure, so a seed gives the same runs."""
    b = behaviour
    selector, purpose = rng.choice(WANTS)
    count = rng.choice((1, 1, 2))
    hold = round(rng.uniform(b.hold_min, b.hold_max), 1)
    draw = rng.random()
    forgetful = draw < b.forget_rate
    abandon = not forgetful and draw < b.forget_rate + b.abandon_rate
    on_return = "power_cycle" if rng.random() < b.power_cycle_rate else "reimage"
    if abandon:
        return RunPlan(selector=selector, count=count, purpose=purpose,
                       duration=b.abandon_duration, heartbeat=None, hold=0.0,
                       forgetful=False, abandon=True, on_return=on_return)
    # Long enough that only a release (or a lost heartbeat) ends it.
    duration = int(hold) + 60
    return RunPlan(selector=selector, count=count, purpose=purpose, duration=duration,
                   heartbeat=b.heartbeat, hold=hold, forgetful=forgetful, abandon=False,
                   on_return=on_return)


class Runs:
    """The owners' runs against one server, and what they did.

    Args:
        url: the Corral server.
        tokens: each owner's ``user`` token.
        behaviour: how the runs behave.
        stop: set to stop; every lease still held or queued is then released.
        runs_per_owner: stop an owner after this many runs (None: until ``stop``).
    """

    def __init__(self, url: str, tokens: dict[str, str], behaviour: RunBehaviour,
                 stop: threading.Event, *, runs_per_owner: int | None = None) -> None:
        self.url, self.tokens, self.behaviour, self.stop = url, tokens, behaviour, stop
        self.runs_per_owner = runs_per_owner
        self.tally: dict[str, Counter[str]] = {owner: Counter() for owner in tokens}
        self._started: Counter[str] = Counter()
        self._lock = threading.Lock()
        # Leases walked away from, still the owners' to release when stopping.
        self._abandoned: dict[str, tuple[str, str]] = {}
        self.refused_token = False

    # ------------------------------------------------------------ the whole
    def run(self) -> dict[str, Counter[str]]:
        """Run every owner's runs until ``stop`` (or each has run
        ``runs_per_owner``); returns the tally per owner."""
        self._release_leftovers()
        threads = [threading.Thread(target=self._slot, args=(owner,), daemon=True,
                                    name=f"run-{owner}-{i}")
                   for owner in self.tokens for i in range(self.behaviour.parallel)]
        for thread in threads:
            thread.start()
        abandoned_released = False
        for thread in threads:
            # Joined in steps, so that the main thread's signal handlers run,
            # and that the abandoned leases go back while the runs give back
            # theirs: the server may be stopping too.
            while thread.is_alive():
                thread.join(timeout=0.2)
                if self.stop.is_set() and not abandoned_released:
                    abandoned_released = True
                    self._release_abandoned()
        if self.stop.is_set():
            self._release_abandoned()  # any walked away from meanwhile
        return self.tally

    def connect(self, token: str) -> Corral:
        return Corral(self.url, token, timeout=10.0)

    def _release_leftovers(self) -> None:
        """Release what the owners left open last time: a server stopped at
        the same moment as its runs (Ctrl-C in `make run`) may not have
        heard their releases. Waits for the server to answer."""
        for owner, token in self.tokens.items():
            with self.connect(token) as corral:
                while not self.stop.is_set():
                    try:
                        for lease in corral.leases.list(owner=owner, open=True):
                            if lease.state not in ENDED:
                                corral.leases.release(lease.id, reason="left open by an "
                                                      "earlier simulator")
                                self._count(owner, "released_leftover")
                        break
                    except Unavailable:
                        self.stop.wait(self.behaviour.poll)

    def _count(self, owner: str, what: str) -> None:
        with self._lock:
            self.tally[owner][what] += 1

    def _ticket(self, owner: str) -> int | None:
        """The owner's next run number, or None when it has run enough."""
        with self._lock:
            if self.runs_per_owner is not None and self._started[owner] >= self.runs_per_owner:
                return None
            self._started[owner] += 1
            return self._started[owner]

    def _slot(self, owner: str) -> None:
        with self.connect(self.tokens[owner]) as corral:
            while not self.stop.is_set():
                number = self._ticket(owner)
                if number is None:
                    return
                rng = random.Random(f"{self.behaviour.seed}:{owner}:{number}")
                try:
                    Run(self, corral, owner, plan_run(rng, self.behaviour), rng).play()
                except AuthError as exc:
                    # The server does not know the tokens (another database?):
                    # nothing any run can do about it.
                    log.error("simulated_run_refused", owner=owner, error=str(exc))
                    self.refused_token = True
                    self.stop.set()
                except Unavailable as exc:
                    self._count(owner, "unreachable")
                    log.debug("simulated_run_unreachable", owner=owner, error=str(exc))
                    self.stop.wait(self.behaviour.poll)
                except CorralError as exc:
                    self._count(owner, "error")
                    log.warning("simulated_run_failed", owner=owner,
                                error=f"{type(exc).__name__}: {exc}")
                    self.stop.wait(self.behaviour.poll)

    def abandon(self, owner: str, lease: Lease) -> None:
        with self._lock:
            self._abandoned[lease.id] = (owner, lease.token or "")

    def _release_abandoned(self) -> None:
        """Stopping: the abandoned leases that have not expired yet go back too."""
        with self._lock:
            abandoned = sorted(self._abandoned.items())
            self._abandoned.clear()
        for lease_id, (owner, token) in abandoned:
            try:
                with self.connect(self.tokens[owner]) as corral:
                    done = corral.leases.release(lease_id, token=token,
                                                 reason="the simulated runs stopped")
                    if done.raw.get("ended_by") in RELEASED:
                        self._count(owner, "released_at_stop")
            except CorralError as exc:
                log.warning("simulated_run_release_failed", lease=lease_id, error=str(exc))


class Run:
    """One test run: ask, wait, hold (heartbeat, a holder's event), give back."""

    def __init__(self, runs: Runs, corral: Corral, owner: str, plan: RunPlan,
                 rng: random.Random) -> None:
        self.runs, self.corral, self.owner, self.plan, self.rng = runs, corral, owner, plan, rng
        self.stop = runs.stop
        self.poll = runs.behaviour.poll
        # Nothing of this run's lease is left to give back (it was released,
        # it ended, or it was walked away from: Runs releases those).
        self.settled = False

    def count(self, what: str) -> None:
        self.runs._count(self.owner, what)

    def play(self) -> None:
        plan = self.plan
        try:
            lease = self.corral.leases.request(
                **plan.request(), wait_timeout=self.runs.behaviour.wait_timeout)
        except Conflict as exc:
            # A quota, or not enough boards in the lab: try again later.
            self.count("refused")
            log.info("simulated_run_refused", owner=self.owner, reason=str(exc))
            self.stop.wait(self.poll * 2)
            return
        self.count("requested")
        with self._released_when_stopped(lease):
            active = self._wait_active(lease)
            if active is None:
                return
            self.count("active")
            board = self.rng.choice(active.boards or [""])
            if plan.abandon:
                self._fire(active, board)
                self.runs.abandon(self.owner, active)
                self.settled = True
                self.count("abandoned")
                return
            self._hold(active, board)

    @contextmanager
    def _released_when_stopped(self, lease: Lease) -> Iterator[None]:
        try:
            yield
        finally:
            if self.stop.is_set() and not self.settled:
                # At once, without asking first: the server may be stopping too.
                try:
                    done = self.corral.leases.release(lease.id, token=lease.token,
                                                      reason="the simulated runs stopped")
                    if done.raw.get("ended_by") in RELEASED:
                        self.count("released_at_stop")
                except CorralError as exc:
                    log.warning("simulated_run_release_failed", lease=lease.id,
                                error=str(exc))

    def _wait_active(self, lease: Lease) -> Lease | None:
        """The lease once active; None if it ended first (its wait timed out) or
        the runs stop."""
        while not self.stop.is_set():
            current = self.corral.leases.show(lease.id, token=lease.token)
            if current.active:
                return Lease.of(current.raw, lease.token)
            if current.state in ENDED:
                self.settled = True
                self.count("gave_up" if current.state == "cancelled" else f"ended_{current.state}")
                return None
            self.stop.wait(self.poll)
        return None

    def _fire(self, lease: Lease, board: str) -> bool:
        """The holder's event at ``board``; False when the lease has ended
        (fencing refused it)."""
        try:
            self.corral.leases.fire(lease.id, board, HOLDER_EVENT, token=lease.token)
        except Conflict as exc:
            if "has ended" in str(exc) or "does not hold" in str(exc):
                self.count("fenced")
                return False
            # The board is not back in `leased` yet (its last reboot).
            self.count("event_refused")
            return True
        self.count(f"{HOLDER_EVENT}_fired")
        return True

    def _hold(self, lease: Lease, board: str) -> None:
        plan = self.plan
        start = time.monotonic()
        fire_at = start + self.rng.uniform(0.5, max(1.0, plan.hold / 2))
        beat_every = (plan.heartbeat or 60) / 3
        beat_at = start + beat_every
        fired = False
        while not self.stop.is_set():
            now = time.monotonic()
            if not fired and now >= fire_at:
                fired = True
                if not self._fire(lease, board):
                    # Refused: the lease ended under it (a forgetful run's
                    # heartbeat ran out first).
                    self.settled = True
                    self.count("heartbeat_lost" if plan.forgetful else "ended_early")
                    return
            if now - start >= plan.hold:
                break
            if plan.forgetful:
                # No heartbeat: the run only notices when its lease has ended.
                if self.corral.leases.show(lease.id, token=lease.token).state != "active":
                    self._lost(lease, board)
                    return
            elif now >= beat_at:
                beat_at = now + beat_every
                try:
                    self.corral.leases.heartbeat(lease.id, token=lease.token)
                except Conflict:
                    self.settled = True
                    self.count("ended_early")
                    return
            self.stop.wait(min(self.poll, max(0.0, plan.hold - (now - start))))
        if self.stop.is_set():
            return
        if plan.forgetful:
            # It held on longer than its heartbeat allows: the lease must end.
            self._await_end(lease, board)
            return
        self.corral.leases.release(lease.id, token=lease.token, reason="test run done")
        self.settled = True
        self.count("released")

    def _await_end(self, lease: Lease, board: str) -> None:
        while not self.stop.is_set():
            if self.corral.leases.show(lease.id, token=lease.token).state != "active":
                self._lost(lease, board)
                return
            self.stop.wait(self.poll)

    def _lost(self, lease: Lease, board: str) -> None:
        """A forgetful run finds its lease gone; still sure it holds the
        board, it reboots it once more, and is refused (fencing)."""
        self.settled = True
        self.count("heartbeat_lost")
        self._fire(lease, board)


def format_tally(tally: dict[str, Counter[str]]) -> list[str]:
    """One line per owner: ``alice: active=7 released=5 ...``."""
    return [f"{owner}: " + (" ".join(f"{k}={v}" for k, v in sorted(counts.items()))
                            or "nothing to report")
            for owner, counts in tally.items()]


def run_runs(url: str, tokens: dict[str, str], behaviour: RunBehaviour,
             stop: threading.Event, *, runs_per_owner: int | None = None
             ) -> dict[str, Counter[str]]:
    """Play the owners' runs until ``stop`` is set (or each has run
    ``runs_per_owner``); returns what they did, per owner.

    Raises:
        AuthError: the server refused the owners' tokens.
    """
    runs = Runs(url, tokens, behaviour, stop, runs_per_owner=runs_per_owner)
    tally = runs.run()
    if runs.refused_token:
        raise AuthError(f"{url} refused the simulated owners' tokens; run this beside the "
                        f"server, on its database")
    return tally
