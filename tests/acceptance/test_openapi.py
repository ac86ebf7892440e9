"""Property-based requests generated from /openapi.json against a running server:
no 5xx, and every response matches the documented schema and statuses."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
)

from tests.acceptance.test_http import Lab


@pytest.fixture
def api_schema(tmp_path, migrated_url):
    lab = Lab(migrated_url, tmp_path)
    (tmp_path / "lab.yaml").write_text("boards:\n  - {name: b1}\n  - {name: b2}\n")
    lab.cli("board", "import", "lab.yaml")
    lab.token = lab.cli("token", "create", "fuzz", "--role", "admin")
    lab.start()
    schema = schemathesis.openapi.from_url(f"{lab.base}/openapi.json")
    schema.lab = lab
    yield schema
    lab.stop()


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, api_schema):
    lab = api_schema.lab
    headers = {"Authorization": f"Bearer {lab.token}"}
    case.call_and_validate(base_url=lab.base, headers=headers,
                           excluded_checks=[positive_data_acceptance, negative_data_rejection])
