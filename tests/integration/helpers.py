"""Small readers used by integration tests to look at what the engine wrote."""

from __future__ import annotations

from sqlalchemy import func, select

from corral.engine.core import Engine
from corral.machines import load_definitions
from corral.paths import DEFAULT_STATEMACHINES_DIR
from corral.store.schema import history, machines, operations

# Who fires each board event (the first role of its transition's `by`), and the
# history source that goes with it; events the board machine lacks: an admin.
# An event several transitions share (reboot: an operator's from ready, a
# holder's from leased) is fired as its first transition says.
_FIRERS: dict[str, str] = {}
for _t in load_definitions(DEFAULT_STATEMACHINES_DIR)["board"].transitions:
    _FIRERS.setdefault(_t.trigger, _t.by[0])
_SOURCES = {"board": "callback", "operation": "operation", "operator": "operator",
            "admin": "operator", "holder": "operator", "lease": "operator"}


def firing(event: str) -> dict[str, str]:
    """``source`` and ``role`` to fire a board event as its transition allows."""
    role = _FIRERS.get(event, "admin")
    return {"source": _SOURCES[role], "role": role}


def snapshot(engine: Engine) -> tuple:
    """Every row of every table, to prove a refused request changed nothing."""
    with engine.store.sa.begin() as conn:
        return tuple(
            tuple(tuple(r) for r in conn.execute(select(t).order_by(t.c.id)))
            for t in (machines, history, operations)
        )


def history_count(engine: Engine) -> int:
    with engine.store.sa.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(history)).scalar_one())


def operations_of(engine: Engine, name: str, kind: str = "board") -> list:
    row = engine.get(kind, name)
    with engine.store.sa.begin() as conn:
        return list(conn.execute(select(operations).where(operations.c.machine_id == row.id)
                                 .order_by(operations.c.id)))
