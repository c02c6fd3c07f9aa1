"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis).

Bounded: a fixed number of generated requests per operation, over the real app (SmolLM2,
Chroma, SQLite). It must find no 5xx, and no response that the document does not describe.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from hearth.api import create_app
from tests.test_api import index

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_api_never_fails_or_breaks_its_schema(make_services: Any) -> None:
    services = make_services(rate_limit="100000/minute", question_rate_limit="100000/minute")
    index(services)
    app = create_app(services.settings, services)
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {f"{m.upper()} {p}" for p, ops in schema.raw_schema["paths"].items() for m in ops}
    # Schemathesis leaves out the document's own route.
    assert {op.label for op in operations} == documented - {"GET /api/openapi.json"}
    tried: list[str] = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)
            tried.append(case.operation.label)

        fuzz()
    assert len(set(tried)) == len(operations)
