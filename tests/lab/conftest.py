"""Lab tests boot QEMU boards that netboot what Corral writes: each takes
minutes. They are marked ``lab`` and ``slow``; they skip where QEMU or the
boot packages are missing, and fail instead under ``CORRAL_REQUIRE_LAB=1``
(CI installs the packages)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.lab import missing

HERE = Path(__file__).parent
REQUIRE_LAB = os.environ.get("CORRAL_REQUIRE_LAB") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.lab)


@pytest.fixture
def lab_host() -> None:
    absent = missing()
    if absent:
        reason = "the lab needs " + ", ".join(absent)
        if REQUIRE_LAB:
            pytest.fail(f"CORRAL_REQUIRE_LAB=1 but {reason}")
        pytest.skip(reason)
