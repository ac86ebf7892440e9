"""Simulated boards: what a real board's second stage reports, without a board.

A real board that network-boots runs a second-stage script that calls Corral
back (``second_stage_started``, then ``install_ok`` or ``install_failed``).
This simulator plays that part for every board of a simulated lab, and now and
then asks for a reimage of an idle board, as a job would. It fires events with
source ``callback``, exactly as the HTTP endpoint does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import structlog

from corral.engine.core import Engine
from corral.errors import CorralError

log = structlog.get_logger("corral.simulate")


@dataclass(frozen=True, kw_only=True)
class BoardBehaviour:
    boot_seconds: float = 8.0
    install_seconds: float = 15.0
    install_failure: float = 0.1
    reimage_rate: float = 0.02
    seed: int = 0


class SimulatedBoards:
    def __init__(self, engine: Engine, behaviour: BoardBehaviour) -> None:
        self.engine = engine
        self.behaviour = behaviour
        self._ticks = 0

    def tick(self) -> int:
        """Fire the callbacks that are due now; returns how many fired."""
        self._ticks += 1
        b = self.behaviour
        now = self.engine.clock()
        fired = 0
        for board in self.engine.list_machines("board"):
            rng = random.Random(f"{b.seed}:{board.name}:{board.epoch}:{self._ticks}")
            waited = (now - board.state_entered_at).total_seconds()
            event = None
            payload = None
            if board.state == "pxe_booting" and waited >= b.boot_seconds:
                event = "second_stage_started"
            elif board.state == "installing" and waited >= b.install_seconds:
                event = "install_failed" if rng.random() < b.install_failure else "install_ok"
            elif board.state == "ready" and rng.random() < b.reimage_rate:
                event, payload = "reimage", {"release": "simulated-release"}
            if event is None:
                continue
            try:
                self.engine.fire("board", board.name, event, source="callback", payload=payload,
                                 actor=f"simulated:{board.name}")
                fired += 1
            except CorralError as exc:
                # The board moved on between the list and the event: a real
                # board's late callback gets the same refusal.
                log.debug("simulated_callback_refused", board=board.name, error=str(exc))
        return fired
