"""The load test at CI size against the session's `bentoml serve`: 1,000 requests from 32 concurrent clients, mixed
sizes, every answer checked against CrossEncoder.predict, no 5xx and no connection error."""

from __future__ import annotations

import asyncio

from benchmarks.load_test import make_payloads, run_load
from tests.conftest import FIXTURE_MODEL_ID


def test_a_thousand_requests_from_32_clients_all_answered_correctly(server, fixture_model_dir) -> None:
    payloads = make_payloads(fixture_model_dir, FIXTURE_MODEL_ID, distinct=100, max_docs=6, words=(2, 12))
    outcome = asyncio.run(run_load(server.url, payloads, requests=1000, concurrency=32))
    assert outcome.statuses == {200: 1000}, outcome.statuses
    assert outcome.connection_errors == 0
    assert outcome.wrong_answers == []
