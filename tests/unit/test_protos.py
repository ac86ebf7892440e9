"""The committed generated gRPC code matches protos/ (`make proto` refreshes it)."""

from __future__ import annotations

from corral.mo.codegen import generate
from corral.paths import PROJECT_ROOT


def test_generated_code_is_current(tmp_path):
    fresh = generate(tmp_path)
    assert fresh, "nothing was generated"
    for path in fresh:
        committed = PROJECT_ROOT / "src" / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make proto`"
