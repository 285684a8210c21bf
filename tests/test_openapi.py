"""The OpenAPI document, and schemathesis fuzzing of a live offline server against it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.jobs import JobRecord
from app.openapi import JobView, openapi_document
from app.views import RunContent, job_view
from graph.state import DroppedSource

REPO = Path(__file__).resolve().parent.parent
SERVE = [sys.executable, "-c", "from app.cli import main; raise SystemExit(main())", "serve"]
schema = schemathesis.openapi.from_dict(openapi_document())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run `scout serve` offline in a child process for the whole module."""
    port = _free_port()
    env = {
        **os.environ,
        "SCOUT_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "SCOUT_LLM": "offline",
        "SCOUT_SEARCH": "local",
        "SCOUT_LOG_LEVEL": "ERROR",
    }
    server = subprocess.Popen(
        [*SERVE, "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=REPO
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(15)


def test_openapi_route_serves_document(live_url: str) -> None:
    response = httpx.get(f"{live_url}/openapi.json")

    assert response.status_code == 200
    assert response.json() == openapi_document()


def test_openapi_describes_every_route() -> None:
    paths = openapi_document()["paths"]

    assert set(paths) == {
        "/research",
        "/status/{job_id}",
        "/research/{job_id}/approve",
        "/research/{job_id}/cancel",
        "/research/{job_id}/events",
        "/health",
    }
    assert set(paths["/research"]) == {"get", "post"}


def test_openapi_request_schemas_match_models() -> None:
    schemas = openapi_document()["components"]["schemas"]

    assert schemas["ResearchRequest"]["required"] == ["question"]
    assert schemas["ApprovalRequest"]["required"] == ["approved"]
    assert schemas["PlanStep"]["properties"]["queries"]["maxItems"] == 6


# positive_data_acceptance is left out: a schema-valid request may still be rejected for
# the job's state (409), an unknown job id (404), a reused idempotency key or an expired
# cursor (422), which the document cannot express. Every other default check runs:
# no 5xx, status codes, content types, headers and bodies that conform to the document.
@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_openapi(case: schemathesis.Case, live_url: str) -> None:
    case.call_and_validate(base_url=live_url, excluded_checks=[positive_data_acceptance])


def test_openapi_job_view_matches_view_keys() -> None:
    record = JobRecord(
        id="job-1",
        status="done",
        question="How do glaciers move?",
        error=None,
        idempotency_key=None,
        request_hash=None,
        model="offline",
        search="local",
        created_at=1.0,
        updated_at=2.0,
        planned_at=None,
        approved_at=None,
        finished_at=None,
        decision=None,
        last_event_id=0,
        version=0,
    )
    dropped = DroppedSource(url="https://example.com", title="Example", reason="instructions")

    view = job_view(record, RunContent(dropped_sources=[dropped]))

    assert set(view) == set(JobView.model_fields)
    assert JobView.model_validate(view).dropped_sources[0].reason == "instructions"
