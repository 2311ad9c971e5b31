"""The HTTP API fuzzed from its own OpenAPI document (schemathesis), with inputs that fit the
schema and inputs that break it, with and without a key: no input gets a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import Stack
from tests.integration.fault_harness import record

pytestmark = pytest.mark.integration


def test_no_input_gets_a_server_error(api_url: str, api_key: str, stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/jobs", "/v1/jobs/{job_id}", "/healthz"}
    calls = 0

    for operation, mode in [(op, mode) for op in operations for mode in GenerationMode]:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: Any) -> None:
            nonlocal calls
            for headers in ({"x-api-key": api_key}, {}):
                response = case.call(headers=headers)
                calls += 1
                assert response.status_code < 500, (case.method, case.path, case.body, response.text)
                if response.status_code >= 400:
                    body = response.json()
                    assert body["error"]["code"] and body["error"]["message"]
                    assert "Traceback" not in response.text

        try:
            fuzz()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to break (no parameters, no body)
    assert calls > 100
    record("api_fuzz", {"requests": calls, "server_errors": 0})
