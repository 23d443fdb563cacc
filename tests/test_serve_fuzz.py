"""The service's OpenAPI schema, fuzzed with schemathesis against a real server on loopback:
no request it can generate gets a 5xx, and every 4xx leaves the state exactly as it was."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, settings  # noqa: E402

from test_serve import AUTH, N, Server, everything  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("fuzz") / "state", NAP_MAX_READ_IDS=str(N),
                 NAP_MAX_BODY_BYTES="65536").start()
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_fuzzed_requests(case, fuzz_server):
    with httpx.Client(base_url=fuzz_server.url, headers=AUTH, timeout=30) as http:
        before = everything(http)
        response = case.call(headers=AUTH)
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        if 400 <= response.status_code < 500:
            assert response.json()["error"], response.text
            after = everything(http)
            assert after[1] == before[1], case.as_curl_command()
            assert np.array_equal(after[0].view(np.uint32), before[0].view(np.uint32))
