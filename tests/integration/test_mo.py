"""The MO client against the real MO simulator over gRPC on loopback."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from corral.mo.client import (
    MoClient,
    MoError,
    applied_from_pb,
    applied_to_pb,
    override_from_pb,
    override_to_pb,
)
from corral.mo.simulator import Faults, MoSimulator, serve_simulator
from corral.mo.types import AppliedVersions, HostComponent, Override

POOL = "testbed-cert-pool-1-f1"
OS = "azurelinux3-test-x86_64-r11"


@pytest.fixture
def mo():
    started = []

    def start(**kwargs):
        simulator = MoSimulator(**kwargs)
        server, port = serve_simulator(simulator, "127.0.0.1:0")
        client = MoClient(f"127.0.0.1:{port}", deadline=2, backoff=0.01)
        started.append((server, client))
        return simulator, client

    yield start
    for server, client in started:
        client.close()
        server.stop(grace=None)


def test_domain_types_round_trip_through_protobuf():
    override = Override(target=POOL, component=HostComponent.OS, version=OS,
                        ttl=timedelta(hours=2, seconds=3))
    assert override_from_pb(override_to_pb(override)) == override
    applied = AppliedVersions(target=POOL, component=HostComponent.OS,
                              nodes={"n1": OS, "n0": "base-os"})
    assert applied_from_pb(POOL, HostComponent.OS, applied_to_pb(applied)) == applied


def poll_until_converged(client, simulator, polls=200):
    for _ in range(polls):
        applied = client.applied_versions(POOL)
        if applied.converged(OS):
            return applied
        time.sleep(0.01)
    return applied


def test_clean_rollout_is_gradual_and_converges(mo):
    simulator, client = mo(nodes_per_pool=4, batch=1, tick=0.05)
    before = client.applied_versions(POOL)
    assert set(before.nodes.values()) == {"base-os"}
    accepted = client.set_override(Override(target=POOL, component=HostComponent.OS,
                                            version=OS, ttl=timedelta(minutes=30)))
    first = client.applied_versions(POOL)
    assert 1 <= len(first.nodes) - len(first.lagging(OS)) < 4, "the rollout is gradual"
    assert poll_until_converged(client, simulator).converged(OS)
    # The TTL reached MO as given, and MO's expiry reflects it.
    [seen] = simulator.overrides(POOL)
    assert seen.ttl == timedelta(minutes=30)
    assert abs(accepted.expires_at - (datetime.now(UTC) + timedelta(minutes=30))) < timedelta(
        seconds=5)


def test_override_expires_after_its_ttl(mo):
    simulator, client = mo(nodes_per_pool=2, batch=2, tick=0.01)
    client.set_override(Override(target=POOL, component=HostComponent.OS, version=OS,
                                 ttl=timedelta(seconds=0.2)))
    assert poll_until_converged(client, simulator).converged(OS)
    time.sleep(0.3)
    assert set(client.applied_versions(POOL).nodes.values()) == {"base-os"}


def test_bursts_of_unavailable_are_retried(mo):
    simulator, client = mo(nodes_per_pool=3, batch=3, tick=0.01, seed=3,
                           faults=Faults(unavailable_rate=0.5))
    client.attempts = 12
    client.set_override(Override(target=POOL, component=HostComponent.OS, version=OS,
                                 ttl=timedelta(minutes=5)))
    assert poll_until_converged(client, simulator, polls=50).converged(OS)
    assert simulator.unavailable_answers > 0


def test_unavailable_beyond_the_retries_is_an_error(mo):
    simulator, client = mo(faults=Faults(unavailable_rate=1.0))
    client.attempts = 3
    with pytest.raises(MoError) as info:
        client.applied_versions(POOL)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert simulator.unavailable_answers == 3


def test_a_stuck_node_never_converges(mo):
    simulator, client = mo(nodes_per_pool=4, batch=4, tick=0.01,
                           faults=Faults(stuck_nodes=1, wrong_version_nodes=1))
    client.set_override(Override(target=POOL, component=HostComponent.OS, version=OS,
                                 ttl=timedelta(minutes=5)))
    time.sleep(0.05)
    applied = poll_until_converged(client, simulator, polls=20)
    assert not applied.converged(OS)
    assert applied.lagging(OS) == [f"{POOL}-node-0", f"{POOL}-node-1"]
    assert applied.nodes[f"{POOL}-node-1"] == f"{OS}-mismatch"


def test_invalid_request_is_not_retried(mo):
    _simulator, client = mo()
    with pytest.raises(MoError) as info:
        client.set_override(Override(target="", component=HostComponent.OS, version=OS,
                                     ttl=timedelta(minutes=5)))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "after 1 attempt" in str(info.value)


def test_unreachable_mo_is_an_error_after_retries():
    slept = []
    with MoClient("127.0.0.1:1", deadline=0.5, attempts=3, backoff=0.01,
                  sleep=slept.append) as client, pytest.raises(MoError) as info:
        client.applied_versions(POOL)
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert slept == [0.01, 0.02]
