"""Acceptance tests run the `corral` command and servers as processes: each
takes seconds. They are all marked slow, so that `pytest -m "not slow"` runs
the quick part of the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)
