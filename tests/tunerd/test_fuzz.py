"""Property-based fuzz of the served OpenAPI (schemathesis): no request gets a 5xx, on
SQLite and PostgreSQL, with and without the token."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.tunerd.conftest import TOKEN  # noqa: E402


def test_no_server_errors(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def fuzz(case):
            for headers in ({"Authorization": f"Bearer {TOKEN}"}, {}):
                r = case.call(base_url=server.url, headers=headers, timeout=30)
                assert r.status_code < 500, (case.method, case.path, r.status_code, r.text[:500])

        fuzz()
