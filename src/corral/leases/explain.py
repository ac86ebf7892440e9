"""Why a lease waits (``corral lease explain``): its place in its class, what
each of its constraints ruled out, who holds the boards it could use and
until when, and the quotas it hits; and the whole queue in the order the
scheduler's pass serves it (the console's leases view)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from corral.config import Settings
from corral.leases import selector as selectors
from corral.leases.model import BOARD, KIND, WAITING, iso
from corral.leases.scheduler import rank_key


def explain(tx: Any, lease: dict[str, Any], settings: Settings, now: datetime
            ) -> dict[str, Any]:
    """The explanation of ``lease`` (a row of ``tx.leases.get``), read in ``tx``."""
    answer: dict[str, Any] = {"id": lease["name"], "state": lease["state"],
                              "owner": lease["owner"], "wants": _wants(lease)}
    if lease["state"] not in WAITING:
        answer["why"] = _not_queued(lease)
        return answer
    holds = tx.leases.holds()
    candidates, ruled_out = _census(tx, lease)
    leased = [b for b in candidates if b.name in holds]
    free = [b.name for b in candidates if b.name not in holds and b.state == "ready"]
    answer["matching"] = len(candidates)
    answer["ruled_out"] = dict(ruled_out)
    answer["leased"] = len(leased)
    answer["not_ready"] = dict(Counter(b.state for b in candidates
                                       if b.name not in holds and b.state != "ready"))
    answer["free"] = len(free)
    answer["blocking"] = _blocking(tx, leased, holds)
    answer["position"] = _position(tx, lease, settings, now)
    answer["quota"] = _quotas(tx, lease, settings)
    if lease["state"] == "allocating":
        answer["keeps_until"] = iso(lease["state_entered_at"]
                                    + timedelta(seconds=settings.lease_reserve_for))
    answer["why"] = _why(lease, answer)
    expiries = sorted(b["expires_at"] for b in answer["blocking"] if b["expires_at"])
    short = lease["count"] - len(free)
    answer["estimate"] = (expiries[short - 1] if 0 < short <= len(expiries) else None)
    return answer


def _census(tx: Any, lease: dict[str, Any]) -> tuple[list[Any], Counter[str]]:
    """The boards the lease could use, and how many each constraint ruled out."""
    selector = selectors.parse(lease["selector"]) if lease["selector"] else None
    ruled_out: Counter[str] = Counter()
    candidates = []
    for board in tx.machines.list(BOARD):
        if board.state == "retired":
            continue
        if lease["board"] and board.name != lease["board"]:
            ruled_out[f"name={lease['board']}"] += 1
            continue
        miss = selector.first_miss(selectors.facts_of(board.name, board.attrs)) \
            if selector else None
        if miss is not None:
            ruled_out[str(miss)] += 1
        else:
            candidates.append(board)
    return candidates, ruled_out


def _blocking(tx: Any, leased: list[Any], holds: dict[str, tuple[int, int]]
              ) -> list[dict[str, Any]]:
    """Who holds what the lease could use, and when that ends (soonest first)."""
    blocking: dict[int, dict[str, Any]] = {}
    for board in leased:
        lease_id, _ = holds[board.name]
        if lease_id not in blocking:
            other = tx.leases.get(f"lease-{lease_id}")
            if other is None:
                continue
            blocking[lease_id] = {"lease": other["name"], "owner": other["owner"],
                                  "state": other["state"], "boards": 0,
                                  "expires_at": iso(other["expires_at"])}
        blocking[lease_id]["boards"] += 1
    return sorted(blocking.values(), key=lambda b: b["expires_at"] or "")


def _position(tx: Any, lease: dict[str, Any], settings: Settings, now: datetime
              ) -> dict[str, Any]:
    """Its place in its priority class, as the scheduler ranks it."""
    ranked, usage = _ranked(tx, settings, now)
    queue = [q for q in ranked if q["priority"] == lease["priority"]]
    place = next(i for i, q in enumerate(queue, 1) if q["id"] == lease["id"])
    return {"class": lease["priority"], "place": place, "of": len(queue),
            "share": lease["share"],
            "share_board_seconds": round(usage.get(lease["share"], 0.0))}


def _ranked(tx: Any, settings: Settings, now: datetime
            ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The queued leases in the scheduler's order (:func:`rank_key`), and each
    share's board-seconds over the fair-share window."""
    usage = tx.leases.usage(now - timedelta(seconds=settings.lease_share_window), now)
    queued = tx.leases.list(kind=KIND, states=WAITING, limit=10**9)
    queued.sort(key=lambda q: rank_key(q, usage, now, settings.lease_wait_boost))
    return queued, usage


def queue(tx: Any, settings: Settings, now: datetime, *, limit: int = 500
          ) -> dict[str, Any]:
    """The queue as the scheduler's next pass would serve it: one entry per
    priority class, highest first, each with its leases in order (fair share,
    then age) and its whole length; at most ``limit`` leases in all, the
    first ones. A lease over its owner's board quota is passed over by the
    pass (``over_quota``); an allocating one keeps the free boards it could
    use from the leases below it (``reserving``)."""
    ranked, usage = _ranked(tx, settings, now)
    held = tx.leases.held_boards(kind=KIND, states=["preparing", "active"])
    classes: dict[int, dict[str, Any]] = {}
    shown = 0
    for lease in ranked:
        entry = classes.setdefault(lease["priority"], {
            "priority": lease["priority"], "queued": 0, "leases": []})
        entry["queued"] += 1
        if shown >= limit:
            continue
        shown += 1
        waited = (now - lease["requested_at"]).total_seconds()
        entry["leases"].append({
            "place": entry["queued"], "id": lease["name"], "owner": lease["owner"],
            "project": lease["share"] if lease["share"] != lease["owner"] else None,
            "board": lease["board"], "selector": lease["selector"], "count": lease["count"],
            "release": lease["release"], "purpose": lease["purpose"],
            "requested_at": iso(lease["requested_at"]), "wait_until": iso(lease["wait_until"]),
            "waited_seconds": round(max(waited, 0.0), 1),
            "share_board_seconds": round(usage.get(lease["share"], 0.0)),
            "over_quota": held.get(lease["owner"], 0) + lease["count"]
            > settings.lease_quota_boards,
            "state": lease["state"], "reserving": lease["state"] == "allocating"})
    return {"at": iso(now), "queued": len(ranked), "shown": shown,
            "classes": list(classes.values())}


def _quotas(tx: Any, lease: dict[str, Any], settings: Settings) -> list[str]:
    held = tx.leases.held_boards(kind=KIND, states=["preparing", "active"]).get(
        lease["owner"], 0)
    if held + lease["count"] <= settings.lease_quota_boards:
        return []
    return [f"{lease['owner']} holds {held} boards; with {lease['count']} more it would "
            f"pass the quota of {settings.lease_quota_boards} (lease_quota_boards)"]


def _wants(lease: dict[str, Any]) -> str:
    what = (f"board {lease['board']}" if lease["board"]
            else f"{lease['count']} board(s) matching {lease['selector'] or 'any board'}")
    return what + (f" on {lease['release']}" if lease["release"] else "")


def _why(lease: dict[str, Any], answer: dict[str, Any]) -> str:
    parts = []
    if answer["ruled_out"]:
        parts.append("; ".join(f"{term}: {n} ruled out"
                               for term, n in answer["ruled_out"].items()))
    parts.append(f"leased: {answer['leased']}")
    if answer["not_ready"]:
        states = ", ".join(f"{s} {n}" for s, n in sorted(answer["not_ready"].items()))
        parts.append(f"not ready: {sum(answer['not_ready'].values())} ({states})")
    parts.append(f"free: {answer['free']} of the {lease['count']} it needs")
    if answer["quota"]:
        parts.append("quota: " + "; ".join(answer["quota"]))
    place = answer["position"]
    parts.append(f"place {place['place']} of {place['of']} in priority {place['class']}")
    if lease["state"] == "allocating":
        parts.append(f"allocating: it keeps the free boards it could use from the leases "
                     f"ranked below it until {answer['keeps_until']}, then waits again")
    return "; ".join(parts)


def _not_queued(lease: dict[str, Any]) -> str:
    state = lease["state"]
    if state == "preparing":
        return "its boards are being prepared (reimaged to its release, or held)"
    if state == "active":
        return f"active until {iso(lease['expires_at'])}"
    if state == "returning":
        return f"ended ({lease['ended_by'] or 'deadline'}); its boards are on their way back"
    return f"ended: {state}" + (f" ({lease['ended_by']})" if lease["ended_by"] else "")
