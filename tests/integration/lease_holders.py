"""A process of lease holders, for the lease crash test.

    python -m tests.integration.lease_holders URL --owners o00,o01 --leases 50
        --seed N --acked FILE

One thread per owner keeps up to ``--outstanding`` leases asked for at once:
it asks for one to three boards (a selector on the rack, or any board) for a
few seconds, with a heartbeat or without, waits for each to become active,
fires a holder's reboot at one of its boards now and then, heartbeats (except
the forgetful ones), and releases it when it is done with it (except those it
abandons to expiry). After a release, it tries its board once more with the
ended lease's rights and must be refused.

Every lease id is appended to ``--acked`` as soon as the request answers (the
test checks that none is lost, even when this process is killed). Prints one
JSON line at the end: counts and every violation seen.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field

from corral.app import build_engine
from corral.config import load_settings
from corral.errors import Conflict, CorralError
from corral.leases import Caller, LeaseEnded, LeaseRequest, LeaseService
from corral.leases.model import ENDED
from corral.logs import configure_logging


@dataclass
class Held:
    """What a holder does with one lease of its own."""

    name: str
    hold: float
    heartbeat: int | None
    forgetful: bool
    abandon: bool
    reboot: bool
    active_at: float | None = None
    beat_at: float = 0.0
    boards: list[str] = field(default_factory=list)


def ask(rng: random.Random) -> tuple[LeaseRequest, Held]:
    count = rng.choice((1, 1, 1, 2, 3))
    heartbeat = rng.choice((None, 5))
    spec = LeaseRequest(
        count=count, duration=rng.randint(6, 15), heartbeat=heartbeat,
        selector=rng.choice((None, "rack in (r0,r1)", "rack=r2", "rack notin (r3)")),
        on_return="power_cycle", wait_timeout=rng.choice((3, 600, 600, 600)),
        purpose="crash test")
    held = Held(name="", hold=rng.uniform(0.5, 3.0), heartbeat=heartbeat,
                forgetful=heartbeat is not None and rng.random() < 0.2,
                abandon=rng.random() < 0.15, reboot=rng.random() < 0.3)
    return spec, held


def run_owner(leases: LeaseService, owner: str, total: int, outstanding: int,
              seed: int, acked: str, report: dict) -> None:
    rng = random.Random(seed)
    me = Caller(name=owner, role="user")
    mine: dict[str, Held] = {}
    asked = refused_stale = rebooted = 0
    violations: list[str] = []
    while asked < total or mine:
        while asked < total and len(mine) < outstanding:
            spec, held = ask(rng)
            try:
                answer = leases.request(spec, me)
            except Conflict:           # over a quota: ask again later
                break
            asked += 1
            held.name = answer["id"]
            mine[held.name] = held
            with open(acked, "a") as out:
                out.write(held.name + "\n")
                out.flush()
                os.fsync(out.fileno())
        now = time.monotonic()
        states = {lease["id"]: lease for lease in leases.list(owner=owner, limit=10_000)
                  if lease["id"] in mine}
        for name, held in list(mine.items()):
            lease = states.get(name)
            if lease is None or lease["state"] in ENDED:
                mine.pop(name)
                continue
            if lease["state"] != "active":
                continue
            holder = Caller(name=owner, role="holder", lease=name)
            if held.active_at is None:
                held.active_at, held.beat_at, held.boards = now, now, lease["boards"]
                if held.reboot and held.boards:
                    try:
                        leases.holder_event(name, holder, held.boards[0], "reboot")
                        rebooted += 1
                    except LeaseEnded:
                        pass
            if held.heartbeat and not held.forgetful and now - held.beat_at > 1.0:
                try:
                    leases.heartbeat(name, holder)
                    held.beat_at = now
                except LeaseEnded:
                    pass
            if not held.abandon and now - held.active_at > held.hold:
                leases.release(name, holder, reason="done")
                mine.pop(name)
                try:
                    leases.holder_event(name, holder, held.boards[0], "reboot")
                    violations.append(f"{name}: a holder's event after release was accepted")
                except LeaseEnded:
                    refused_stale += 1
                except CorralError as exc:
                    violations.append(f"{name}: after release: {type(exc).__name__} {exc}")
        time.sleep(0.1)
    report[owner] = {"asked": asked, "refused_stale": refused_stale, "rebooted": rebooted,
                     "violations": violations}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--owners", required=True)
    parser.add_argument("--leases", type=int, default=50)
    parser.add_argument("--outstanding", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--acked", required=True)
    args = parser.parse_args()
    configure_logging("warning", "json")
    # The engine processes' definitions and timeout scale (from the
    # environment), so that a holder's event sets the same timeouts.
    settings = load_settings(overrides={"database_url": args.url})
    engine = build_engine(settings)
    leases = LeaseService(engine, settings)
    report: dict = {}
    threads = [threading.Thread(target=run_owner, args=(
        leases, owner, args.leases, args.outstanding, args.seed * 100 + i, args.acked, report))
        for i, owner in enumerate(args.owners.split(","))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
