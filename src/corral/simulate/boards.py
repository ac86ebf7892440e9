"""Simulated boards that talk to Corral over HTTP, as real boards do.

``corral simulate boards --count N --url URL`` plays N boards (``sim-0001``
...): each holds its own board token, reads its state from the API, and
reports what a network-booting board's second stage reports —
``second_stage_started``, then ``install_ok`` or ``install_failed`` — with an
Idempotency-Key, so a retried request never fires twice. Now and then an idle
board gets a fresh image (``reimage``), asked for with the lab's operator
token as a test job would (a board's own token may fire only its second
stage's events). Power, ping and poll are the engine's operations; run the
server with ``--simulate`` for those.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import structlog

log = structlog.get_logger("corral.simulate")


@dataclass(frozen=True, kw_only=True)
class BoardBehaviour:
    boot_seconds: float = 8.0
    install_seconds: float = 15.0
    install_failure: float = 0.1
    reimage_rate: float = 0.02
    interval: float = 1.0
    seed: int = 0


class SimulatedBoard:
    def __init__(self, name: str, token: str, client: httpx.AsyncClient,
                 behaviour: BoardBehaviour, tally: Counter[str],
                 lab_token: str | None = None) -> None:
        self.name, self.client, self.behaviour, self.tally = name, client, behaviour, tally
        self.headers = {"Authorization": f"Bearer {token}"}
        self.lab_headers = {"Authorization": f"Bearer {lab_token}"} if lab_token else None

    async def run(self, stop: asyncio.Event) -> None:
        b = self.behaviour
        while not stop.is_set():
            try:
                await self.step()
            except httpx.TransportError as exc:
                self.tally["unreachable"] += 1
                log.debug("simulated_board_unreachable", board=self.name, error=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=b.interval)
            except TimeoutError:
                pass

    async def step(self) -> None:
        b = self.behaviour
        reply = await self.client.get(f"/api/v1/boards/{self.name}", headers=self.headers)
        if reply.status_code != 200:
            self.tally[f"read_{reply.status_code}"] += 1
            return
        board = reply.json()
        entered = datetime.fromisoformat(board["state_entered_at"])
        waited = (datetime.now(UTC) - entered).total_seconds()
        rng = random.Random(f"{b.seed}:{self.name}:{board['epoch']}")
        event = None
        if board["state"] == "pxe_booting" and waited >= b.boot_seconds:
            event = "second_stage_started"
        elif board["state"] == "installing" and waited >= b.install_seconds:
            event = "install_failed" if rng.random() < b.install_failure else "install_ok"
        elif (board["state"] == "ready" and self.lab_headers is not None
              and random.random() < b.reimage_rate * b.interval):
            event = "reimage"
        if event is None:
            return
        # One key per state entry and event: a retry after a lost reply replays.
        key = f"{self.name}:{board['epoch']}:{event}"
        headers = self.lab_headers if event == "reimage" and self.lab_headers else self.headers
        reply = await self.client.post(f"/api/v1/boards/{self.name}/events/{event}",
                                       headers=headers | {"Idempotency-Key": key},
                                       json={"simulated": True})
        self.tally[f"{event}_{reply.status_code}"] += 1


async def run_boards(url: str, tokens: dict[str, str], behaviour: BoardBehaviour,
                     stop: asyncio.Event, *, lab_token: str | None = None) -> Counter[str]:
    """Run every board until ``stop`` is set; returns what they did. Without
    ``lab_token`` (an operator token) no board is reimaged."""
    tally: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=min(len(tokens), 100) or 1)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        boards = [SimulatedBoard(name, token, client, behaviour, tally, lab_token)
                  for name, token in sorted(tokens.items())]
        await asyncio.gather(*(board.run(stop) for board in boards))
    return tally
