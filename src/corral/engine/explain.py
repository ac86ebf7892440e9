"""Why a machine is where it is: the answer to "why is this board stuck?".

For one machine: the transition that brought it into its state (event,
source, actor, reason, when), how long it has been there against the state's
timeout and what the timeout does, each counter against its limit and what
happens at the limit, the last finished operation of each kind with its result, the
operations queued or leased for it, and the events the asker may fire. The
CLI (``corral board explain``), the API (``GET /api/v1/boards/NAME/explain``)
and the console show the same document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from corral.machines import MachineSet
from corral.payload import readable, readable_text
from corral.store.port import Store
from corral.store.values import HistoryEntry, MachineRow, OperationRow

# History rows read to find the one that entered the state.
LOOKBACK = 200


def explain(store: Store, machines: MachineSet, row: MachineRow, described: dict[str, Any],
            *, now: datetime, timeout_scale: float = 1.0) -> dict[str, Any]:
    """The explain document of ``row`` (``described``: the engine's
    ``describe`` of it, for the asker's role)."""
    definition = machines[row.kind].definition
    state = definition.states[row.state]
    with store.unit() as tx:
        recent = tx.history.list(row.id, limit=LOOKBACK)
        ops = tx.operations.list(row.id, limit=LOOKBACK)
    entered = _entry_into_state(recent, row)
    seconds_in_state = max(0.0, (now - row.state_entered_at).total_seconds())
    timeout = None
    if state.timeout is not None:
        timeout = {"seconds": state.timeout * timeout_scale, "then": state.on_timeout,
                   "remaining_seconds": (max(0.0, (row.deadline - now).total_seconds())
                                         if row.deadline else None)}
    elif state.deadline_var:
        timeout = {"deadline_var": state.deadline_var, "then": state.on_timeout,
                   "remaining_seconds": (max(0.0, (row.deadline - now).total_seconds())
                                         if row.deadline else None)}
    counters = []
    for name, counter in sorted(_counters(definition).items()):
        value = int(row.counters.get(name, 0))
        counters.append({"name": name, "value": value, "max": counter.max,
                         "at_limit": f"the next of {', '.join(counter.count)} sends it to "
                                     f"{counter.failure}" if value >= counter.max else None,
                         "failure": counter.failure, "counts": list(counter.count),
                         "this_state": state.counter is not None
                         and state.counter.name == name})
    last_by_kind: dict[str, dict[str, Any]] = {}
    for op in ops:  # newest first: the last finished one of each kind
        if op.status not in ("pending", "running"):
            last_by_kind.setdefault(op.kind, _operation(op))
    # Operations written at an earlier state entry are dropped as stale when
    # a worker reaches them: listed, but not part of why it is here.
    waiting = [_operation(op) | {"stale": op.machine_epoch != row.epoch}
               for op in reversed(ops) if op.status in ("pending", "running")]
    return {
        "kind": row.kind, "name": row.name, "state": row.state,
        "description": state.description, "failed": described["failed"],
        "terminal": state.terminal,
        "entered": _history(entered) if entered else None,
        "state_entered_at": row.state_entered_at.isoformat(),
        "seconds_in_state": round(seconds_in_state, 3),
        "timeout": timeout,
        "counters": counters,
        "last_operations": list(last_by_kind.values()),
        "waiting_operations": waiting,
        "allowed_events": described["allowed_events"],
        "accepted_events": described["accepted_events"],
        "summary": _summary(row, state.description, entered, timeout, counters, waiting,
                            last_by_kind, seconds_in_state),
    }


def _entry_into_state(recent: list[HistoryEntry], row: MachineRow) -> HistoryEntry | None:
    """The oldest of the newest rows written at the machine's current epoch:
    the transition into the state (later rows at that epoch are events the
    state took without leaving it)."""
    found = None
    for entry in recent:  # newest first
        if entry.epoch != row.epoch:
            break
        found = entry
    return found or (recent[0] if recent else None)


def _counters(definition: Any) -> dict[str, Any]:
    return {s.counter.name: s.counter for s in definition.states.values() if s.counter}


def _history(entry: HistoryEntry) -> dict[str, Any]:
    return {"id": entry.id, "event": entry.event, "from_state": entry.from_state,
            "to_state": entry.to_state, "source": entry.source,
            "actor": readable_text(entry.actor), "reason": readable_text(entry.reason),
            "at": entry.at.isoformat(), "payload": readable(entry.payload)}


def _operation(op: OperationRow) -> dict[str, Any]:
    return {"id": op.id, "kind": op.kind, "status": op.status, "attempts": op.attempts,
            "run_after": op.run_after.isoformat(),
            "lease_owner": op.lease_owner,
            "lease_expires_at": op.lease_expires_at.isoformat() if op.lease_expires_at else None,
            "result": readable(op.result), "error": readable_text(op.error),
            "created_at": op.created_at.isoformat(),
            "finished_at": op.finished_at.isoformat() if op.finished_at else None}


def _summary(row: MachineRow, description: str, entered: HistoryEntry | None,
             timeout: dict[str, Any] | None, counters: list[dict[str, Any]],
             waiting: list[dict[str, Any]], last: dict[str, dict[str, Any]],
             seconds: float) -> str:
    """One paragraph an operator reads first."""
    parts = [f"{row.kind} {row.name} is {row.state} ({description.rstrip('.')})"
             if description else f"{row.kind} {row.name} is {row.state}"]
    if entered is not None:
        who = f" by {entered.actor}" if entered.actor else ""
        why = f": {entered.reason}" if entered.reason else ""
        parts.append(f"since {entered.event} from {entered.source}{who}{why}, "
                     f"{_duration(seconds)} ago")
    if timeout and timeout.get("remaining_seconds") is not None:
        parts.append(f"its timeout ({timeout['then']}) fires in "
                     f"{_duration(timeout['remaining_seconds'])}")
    elif timeout is None:
        parts.append("it has no timeout: it stays until an event moves it")
    for op in waiting:
        if op["stale"]:
            continue
        state = ("running" if op["status"] == "running" else "waiting") + \
            (f", attempt {op['attempts']}" if op["attempts"] else "")
        parts.append(f"operation {op['kind']} is {state}"
                     + (f" (last error: {op['error']})" if op["error"] else ""))
    for op in last.values():
        if op["status"] in ("failed",) and op["error"]:
            parts.append(f"its last {op['kind']} failed: {op['error']}")
    for counter in counters:
        if counter["this_state"] and counter["value"]:
            parts.append(f"counter {counter['name']} is at {counter['value']} of "
                         f"{counter['max']} (then {counter['failure']})")
    return "; ".join(parts) + "."


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"
