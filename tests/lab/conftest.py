"""Lab tests boot QEMU boards that netboot what Corral writes: each takes
minutes. They are marked ``lab`` and ``slow``; they skip where QEMU or the
boot packages are missing, and fail instead under ``CORRAL_REQUIRE_LAB=1``
(CI installs the packages, and runs as root). Their network is dnsmasq in a
network namespace where ``ip netns add`` works, QEMU's user network
otherwise; under ``CORRAL_REQUIRE_LAB=1`` it must be the namespace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.lab import missing
from corral.lab.network import NETNS, USER

HERE = Path(__file__).parent
REQUIRE_LAB = os.environ.get("CORRAL_REQUIRE_LAB") == "1"
# The lab's network: CI proves the dnsmasq one; elsewhere what the host allows,
# or what CORRAL_LAB_NETWORK says (user: try the fallback as root).
NETWORK = os.environ.get("CORRAL_LAB_NETWORK") or (NETNS if REQUIRE_LAB else "auto")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="module")
def lab_host() -> None:
    absent = missing(NETNS if NETWORK == NETNS else USER)
    if absent:
        reason = "the lab needs " + ", ".join(absent)
        if REQUIRE_LAB:
            pytest.fail(f"CORRAL_REQUIRE_LAB=1 but {reason}")
        pytest.skip(reason)
