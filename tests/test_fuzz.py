"""schemathesis against the HTTP routes' OpenAPI schema, served by a real engine and model: generated requests (valid
and invalid) never cause a server error, and every answer matches the schema's status codes, types and bodies."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rerank_server.api.app import app
from rerank_server.api.dependencies import current_engine, current_health
from rerank_server.api.tracking import RequestTracking
from tests.conftest import scoring_engine

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_asgi("/openapi.json", RequestTracking(app))
# Valid and invalid requests alike; deterministic, so that CI runs the same cases every time.
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE], deterministic=True
)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_schema_conformant_answers(case, stored_fixture) -> None:
    # Small limits keep generated batches cheap; the engine is the production one.
    with scoring_engine(max_documents=64) as engine:
        app.dependency_overrides[current_engine] = lambda: engine
        app.dependency_overrides[current_health] = lambda: lambda: engine.liveness.problem() is None
        try:
            case.call_and_validate(checks=CHECKS)
        finally:
            app.dependency_overrides.clear()


def test_each_operation_is_fuzzed_under_its_own_name(request) -> None:
    """pytest-xdist (`make test`) runs tests by node id: one id for all operations would fuzz only one of them."""
    fuzzed = [
        item.nodeid
        for item in request.session.items
        if item.originalname == "test_generated_requests_get_schema_conformant_answers"
    ]
    assert len(fuzzed) == len(set(fuzzed)) == len(list(schema.get_all_operations())) > 5
