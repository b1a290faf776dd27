"""Property-based requests from the service's own OpenAPI schema: never a 5xx."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from service_helpers import make_data_dir, running_server
from synthetic import make_recording

pytestmark = pytest.mark.integration
EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    data = make_data_dir(tmp_path_factory.mktemp("pose-fuzz"))
    make_recording("squat", 2, fps=30.0).write(data / "squats.jsonl")
    with running_server(
        data, f"sqlite:///{data.parent / 'fuzz.db'}", POSE_MAX_UPLOAD_BYTES="100000"
    ) as srv:
        yield srv


def test_no_operation_answers_with_a_server_error(server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /streams",
        "GET /streams/{stream_id}",
        "DELETE /streams/{stream_id}",
        "POST /analyze",
        "GET /sessions",
        "GET /sessions/{session_id}",
    }
    failures: list[str] = []
    calls = 0
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            response = case.call(base_url=server.url, timeout=60)
            calls += 1
            if response.status_code >= 500:
                where = f"{case.method} {case.formatted_path}"
                failures.append(f"{where}: {response.status_code} {response.text[:200]}")

        run()
        # Streams the fuzzer happened to start must not pile up across operations.
        for stream in httpx.get(f"{server.url}/streams", timeout=60).json():
            httpx.delete(f"{server.url}/streams/{stream['id']}", timeout=60)
    assert calls >= len(operations)
    assert not failures, "\n".join(failures[:10])
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
