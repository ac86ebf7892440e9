"""Health checks: every judged check (``health_results``), each board's
health (``board_health``) and the shared equipment found degraded
(``equipment_health``); docs/health.md."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, insert, select, update

from corral.store.repository import Repository, aware
from corral.store.schema import board_health, equipment_health, health_results, machines

_BOARD_DEFAULTS = {"check_name": None, "checked_at": None, "passed_at": None, "attempt": 0,
                   "loop": 0, "rule": None, "counted_after": None}


def _dated(row: Any) -> dict[str, Any]:
    doc = dict(row._mapping)
    for key in ("at", "checked_at", "passed_at", "since", "retry_at"):
        if doc.get(key) is not None:
            doc[key] = aware(doc[key])
    return doc


class Health(Repository):
    """The ``health_results``, ``board_health`` and ``equipment_health`` tables."""

    # -- results
    def record(self, result: Mapping[str, Any]) -> None:
        """Keep one judged check (board, check_name, outcome, decision, blame,
        step, equipment, image, reason, rule, history_id, at)."""
        self.conn.execute(insert(health_results), dict(result))

    def results(self, board: str, *, limit: int = 20, after: int | None = None
                ) -> list[dict[str, Any]]:
        """A board's judged checks, newest first (those after id ``after``)."""
        query = select(health_results).where(health_results.c.board == board)
        if after is not None:
            query = query.where(health_results.c.id > after)
        rows = self.conn.execute(query.order_by(health_results.c.id.desc()).limit(limit))
        return [_dated(r) for r in rows]

    def newest_result(self) -> int:
        return int(self.conn.execute(select(func.coalesce(func.max(health_results.c.id), 0)))
                   .scalar_one())

    def failed_through(self, equipment: str, since: datetime) -> set[str]:
        """The boards whose checks failed through ``equipment`` since ``since``."""
        rows = self.conn.execute(
            select(health_results.c.board).distinct()
            .where(health_results.c.equipment == equipment, health_results.c.outcome == "failed",
                   health_results.c.at >= since))
        return {r[0] for r in rows}

    def failed_with_image(self, image: str, since: datetime) -> set[str]:
        """The boards whose checks failed after a netboot of ``image`` since ``since``."""
        rows = self.conn.execute(
            select(health_results.c.board).distinct()
            .where(health_results.c.image == image, health_results.c.outcome == "failed",
                   health_results.c.step.in_(("callback", "console", "ping", "poll")),
                   health_results.c.at >= since))
        return {r[0] for r in rows}

    def reblame(self, equipment: str, since: datetime, blame: str) -> int:
        """Blame on ``equipment`` the failures through it since ``since``
        that were blamed on their boards (it is found degraded): they no
        longer count towards those boards' k of n."""
        return int(self.conn.execute(
            update(health_results).where(health_results.c.equipment == equipment,
                                         health_results.c.outcome == "failed",
                                         health_results.c.blame == "board",
                                         health_results.c.at >= since)
            .values(blame=blame)).rowcount or 0)

    def tally(self, since: datetime | None = None) -> list[tuple[str, str, str, int]]:
        """Checks by (check, decision, blame), with how many."""
        query = select(health_results.c.check_name, health_results.c.decision,
                       health_results.c.blame, func.count())
        if since is not None:
            query = query.where(health_results.c.at >= since)
        rows = self.conn.execute(query.group_by(health_results.c.check_name,
                                                health_results.c.decision,
                                                health_results.c.blame))
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def pass_rates(self, *, by: str, since: datetime) -> dict[str, tuple[int, int]]:
        """Passed and judged checks since ``since``, per board or per check
        (``by``: ``board`` or ``check_name``)."""
        column = health_results.c[by]
        passed = func.sum(case((health_results.c.outcome == "passed", 1), else_=0))
        rows = self.conn.execute(select(column, passed, func.count())
                                 .where(health_results.c.at >= since).group_by(column))
        return {r[0]: (int(r[1] or 0), int(r[2])) for r in rows}

    def prune(self, cutoff: datetime) -> int:
        """Forget judged checks older than ``cutoff`` (history retention)."""
        return int(self.conn.execute(delete(health_results)
                                     .where(health_results.c.at < cutoff)).rowcount or 0)

    # -- boards
    def board(self, board: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(board_health).where(board_health.c.board == board)).first()
        return _dated(row) if row else None

    def boards(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not names:
            return {}
        rows = self.conn.execute(select(board_health).where(board_health.c.board.in_(names)))
        return {r.board: _dated(r) for r in rows}

    def put(self, board: str, **values: Any) -> None:
        """Set a board's health values (its row is written on first use)."""
        done = self.conn.execute(update(board_health).where(board_health.c.board == board)
                                 .values(**values))
        if not done.rowcount:
            self.conn.execute(insert(board_health),
                              {**_BOARD_DEFAULTS, **values, "board": board})

    def passed_before(self, cutoff: datetime) -> builtins.list[str]:
        """Boards whose last passed check is older than ``cutoff``."""
        rows = self.conn.execute(select(board_health.c.board)
                                 .where(board_health.c.passed_at < cutoff))
        return [r[0] for r in rows]

    def looping(self) -> builtins.list[str]:
        """Boards with burn-in checks still to run."""
        rows = self.conn.execute(select(board_health.c.board).where(board_health.c.loop > 0))
        return [r[0] for r in rows]

    def by_check(self, states: Sequence[str]) -> builtins.list[tuple[str, str, int]]:
        """Boards in ``states`` by (their last check, state), with how many."""
        query = (select(board_health.c.check_name, machines.c.state, func.count())
                 .select_from(machines.join(board_health,
                                            board_health.c.board == machines.c.name))
                 .where(machines.c.kind == "board", machines.c.state.in_(list(states)))
                 .group_by(board_health.c.check_name, machines.c.state))
        return [(r[0] or "default", r[1], int(r[2])) for r in self.conn.execute(query)]

    # -- equipment
    def equipment(self, *, state: str | None = None) -> dict[str, dict[str, Any]]:
        query = select(equipment_health)
        if state is not None:
            query = query.where(equipment_health.c.state == state)
        return {r.equipment: _dated(r) for r in self.conn.execute(query)}

    def set_equipment(self, equipment: str, **values: Any) -> None:
        done = self.conn.execute(update(equipment_health)
                                 .where(equipment_health.c.equipment == equipment)
                                 .values(**values))
        if not done.rowcount:
            self.conn.execute(insert(equipment_health), {
                "state": "ok", "retry_at": None, "backoff_s": 0, "reason": None,
                **values, "equipment": equipment})
