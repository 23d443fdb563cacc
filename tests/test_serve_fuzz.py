"""The service's OpenAPI schema, fuzzed with schemathesis against a real server on loopback:
no request it can generate — valid by the schema, or deliberately invalid — gets a 5xx, and
every 4xx leaves the state exactly as it was.

The cases come from schemathesis's Hypothesis strategies and run under plain ``@given``
(schemathesis's pytest plugin reaches into pytest internals that pytest 9.2 removed)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from test_serve import AUTH, N, Server, everything  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("fuzz") / "state", NAP_MAX_READ_IDS=str(N),
                 NAP_MAX_BODY_BYTES="65536").start()
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid-by-schema", "invalid-by-schema"])
def test_fuzzed_requests(fuzz_server, mode):
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    seen: set[int] = set()  # status classes answered: the fuzzing must reach both kinds

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def check(case):
        with httpx.Client(base_url=fuzz_server.url, headers=AUTH, timeout=30) as http:
            before = everything(http)
            response = case.call(headers=AUTH)
            seen.add(response.status_code // 100)
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if 400 <= response.status_code < 500:
                assert response.json()["error"], response.text
                after = everything(http)
                assert after[1] == before[1], case.as_curl_command()
                assert np.array_equal(after[0].view(np.uint32), before[0].view(np.uint32))

    check()
    # invalid-by-schema must meet refusals, valid-by-schema acceptances (whether a random
    # invalid case is also accepted somewhere is chance: requiring it made the test flaky)
    assert (4 if mode is GenerationMode.NEGATIVE else 2) in seen, seen
