"""A pytest plugin that leases boards for tests (docs/leases.md).

    pytest -p corral.pytest_plugin --corral-url http://corral:8080   # token: CORRAL_TOKEN

    @pytest.mark.corral_lease(selector="arch=arm64", count=1, duration=1800)
    def test_boots(corral_lease):
        board = corral_lease.boards[0]
        corral_lease.fire(board, "reboot")

The ``corral_lease`` fixture asks for the boards the test's ``corral_lease``
mark describes (default: any one board), waits for them (``--corral-wait``),
heartbeats from a thread while the test runs, and releases the lease at
teardown, whether the test passed, failed or was interrupted (Ctrl-C runs
fixture teardown too). A run killed outright stops heartbeating: the lease
then ends by itself within its heartbeat interval.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from corral.client import Corral, Lease


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("corral", "lease boards from a Corral server")
    group.addoption("--corral-url", default=os.environ.get("CORRAL_URL"),
                    help="The Corral server (or CORRAL_URL); the token is CORRAL_TOKEN.")
    group.addoption("--corral-wait", type=float, default=600.0,
                    help="Seconds to wait for a lease to be granted (default 600).")
    group.addoption("--corral-heartbeat", type=int, default=60,
                    help="The leases' heartbeat interval in seconds (default 60).")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "corral_lease(**request): the boards the "
                                       "corral_lease fixture asks for")


class HeldLease:
    """What a test gets: the lease, its boards, and the holder's calls."""

    def __init__(self, corral: Corral, lease: Lease) -> None:
        self.corral = corral
        self.lease = lease
        self.id = lease.id
        self.boards = lease.boards
        self.token = lease.token

    def fire(self, board: str, event: str, payload: dict[str, Any] | None = None
             ) -> dict[str, Any]:
        return self.corral.leases.fire(self.id, board, event, payload, token=self.token)

    def board(self, board: str) -> dict[str, Any]:
        return self.corral.leases.board(self.id, board, token=self.token)

    def renew(self, duration: int | None = None) -> Lease:
        return self.corral.leases.renew(self.id, duration, token=self.token)


class _Heartbeat(threading.Thread):
    def __init__(self, corral: Corral, lease: Lease, every: float) -> None:
        super().__init__(name=f"corral-heartbeat-{lease.id}", daemon=True)
        self.corral, self.lease, self.every = corral, lease, every
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.corral.leases.heartbeat(self.lease.id, token=self.lease.token)
            except Exception:  # the next beat tries again; the lease ends if none lands
                continue


@pytest.fixture
def corral_client(request: pytest.FixtureRequest) -> Iterator[Corral]:
    url = request.config.getoption("--corral-url")
    token = os.environ.get("CORRAL_TOKEN")
    if not url or not token:
        pytest.skip("no Corral server: give --corral-url (or CORRAL_URL) and CORRAL_TOKEN")
    with Corral(url, token) as corral:
        yield corral


@pytest.fixture
def corral_lease(request: pytest.FixtureRequest, corral_client: Corral) -> Iterator[HeldLease]:
    marker = request.node.get_closest_marker("corral_lease")
    spec: dict[str, Any] = dict(marker.kwargs) if marker else {}
    every = int(spec.pop("heartbeat", request.config.getoption("--corral-heartbeat")))
    spec.setdefault("purpose", f"pytest {request.node.nodeid}"[:500])
    wait = request.config.getoption("--corral-wait")
    lease = corral_client.leases.request(heartbeat=every, wait=wait, **spec)
    beat = _Heartbeat(corral_client, lease, max(every / 3, 1.0))
    beat.start()
    try:
        yield HeldLease(corral_client, lease)
    finally:
        beat.stopped.set()
        beat.join(timeout=10)
        corral_client.leases.release(lease.id, token=lease.token,
                                     reason=f"pytest teardown of {request.node.nodeid}"[:500])
