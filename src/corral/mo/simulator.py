"""A Maintenance Orchestrator simulator: a real gRPC server for labs and tests.

Each pool has ``nodes_per_pool`` nodes (``<pool>-node-0`` ...) on
``base_version``. An override rolls out gradually: ``batch`` more nodes
report the new version every ``tick`` seconds after it was set, and the pool
reverts when its TTL runs out. Progress is computed from elapsed time when
asked, so the simulator has no background thread and is deterministic for a
given clock. Faults on request: a rate of UNAVAILABLE answers, nodes stuck on
the old version, and nodes reporting a different version.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc

from corral.mo.client import applied_to_pb, override_from_pb
from corral.mo.types import AppliedVersions, HostComponent, Override
from corral.mo.v1 import host_version_pb2 as pb
from corral.mo.v1 import host_version_pb2_grpc as pb_grpc


@dataclass(frozen=True, kw_only=True)
class Faults:
    unavailable_rate: float = 0.0
    # The first N nodes of every pool never leave the version they are on.
    stuck_nodes: int = 0
    # The next M nodes report "<version>-mismatch" instead of the override.
    wrong_version_nodes: int = 0


@dataclass
class _Pool:
    nodes: list[str]
    version: str | None = None
    set_at: float = 0.0
    expires_at: float = 0.0
    overrides: list[Override] = field(default_factory=list)


class MoSimulator(pb_grpc.MoHostVersionServicer):
    def __init__(self, *, nodes_per_pool: int = 4, batch: int = 1, tick: float = 1.0,
                 base_version: str = "base-os", faults: Faults | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nodes_per_pool = nodes_per_pool
        self.batch = batch
        self.tick = tick
        self.base_version = base_version
        self.faults = faults or Faults()
        self.clock = clock
        self._rng = random.Random(seed)
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self.unavailable_answers = 0

    # -------------------------------------------------------------- inspection

    def overrides(self, pool: str) -> list[Override]:
        """Every override set on ``pool``, oldest first."""
        with self._lock:
            return list(self._pool(pool).overrides)

    def applied(self, pool: str) -> AppliedVersions:
        with self._lock:
            p = self._pool(pool)
            now = self.clock()
            active = p.version is not None and now < p.expires_at
            moved = (int((now - p.set_at) / self.tick) + 1) * self.batch if active else 0
            nodes = {}
            for index, node in enumerate(p.nodes):
                version = self.base_version
                if active and index < moved and index >= self.faults.stuck_nodes:
                    assert p.version is not None
                    wrong = index < self.faults.stuck_nodes + self.faults.wrong_version_nodes
                    version = f"{p.version}-mismatch" if wrong else p.version
                nodes[node] = version
            return AppliedVersions(target=pool, component=HostComponent.OS, nodes=nodes)

    def _pool(self, name: str) -> _Pool:
        if name not in self._pools:
            self._pools[name] = _Pool(nodes=[f"{name}-node-{i}"
                                             for i in range(self.nodes_per_pool)])
        return self._pools[name]

    def _maybe_unavailable(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            fail = self._rng.random() < self.faults.unavailable_rate
            if fail:
                self.unavailable_answers += 1
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "simulated MO outage")

    # -------------------------------------------------------------- the API

    def SetComponentVersionOverride(
        self, request: pb.SetComponentVersionOverrideRequest, context: grpc.ServicerContext
    ) -> pb.SetComponentVersionOverrideResponse:
        self._maybe_unavailable(context)
        if not request.target.pool_name or not request.version.version:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "target and version are required")
        if request.component != pb.HOST_COMPONENT_OS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only HOST_COMPONENT_OS is managed")
        if request.ttl.ToTimedelta() <= timedelta(0):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ttl must be positive")
        override = override_from_pb(request)
        with self._lock:
            pool = self._pool(override.target)
            now = self.clock()
            if pool.version != override.version or now >= pool.expires_at:
                pool.version, pool.set_at = override.version, now
            # The same override again only extends it (idempotent for retries).
            pool.expires_at = now + override.ttl.total_seconds()
            pool.overrides.append(override)
        reply = pb.SetComponentVersionOverrideResponse()
        reply.expires_at.FromDatetime(datetime.now(UTC) + override.ttl)
        return reply

    def GetAppliedHostComponentVersions(
        self, request: pb.GetAppliedHostComponentVersionsRequest,
        context: grpc.ServicerContext,
    ) -> pb.GetAppliedHostComponentVersionsResponse:
        self._maybe_unavailable(context)
        if not request.target.pool_name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "target is required")
        return applied_to_pb(self.applied(request.target.pool_name))


def serve_simulator(simulator: MoSimulator, listen: str) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``simulator`` on ``listen`` (port 0 picks one).

    Returns the server and the port it listens on.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_MoHostVersionServicer_to_server(simulator, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    return server, port
