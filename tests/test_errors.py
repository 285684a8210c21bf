"""Client errors: each bad request gets an RFC 9457 problem and leaves existing jobs unchanged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.config import Settings
from tests.conftest import make_settings, run_scout
from tests.helpers import TERMINAL, approve, submit, wait_for_status
from tests.support import assert_problem

MAX_BODY_BYTES = 1024
MAX_QUESTION_CHARS = 50
QUESTION = "How does a Fresnel lens focus a lighthouse beam?"
UNKNOWN_JOB = "00000000-0000-4000-8000-000000000000"
STEP = {"goal": "Find out how glaciers move.", "queries": ["glacier crevasse"]}
OVERSIZED = json.dumps({"question": "sourdough " * 300}).encode()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        SCOUT_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        SCOUT_MAX_QUESTION_CHARS=str(MAX_QUESTION_CHARS),
    )


@pytest.fixture
async def waiting_job(client) -> str:
    job_id = await submit(client, QUESTION)
    await wait_for_status(client, job_id, {"awaiting_approval"})
    return job_id


@dataclass(frozen=True)
class BadRequest:
    """A request to send. A `{job}` in the path is replaced by the id of an existing job."""

    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = "application/json"
    chunked: bool = False


def submit_body(body: object) -> BadRequest:
    return BadRequest("POST", "/research", json.dumps(body).encode())


def approve_body(body: object) -> BadRequest:
    return BadRequest("POST", "/research/{job}/approve", json.dumps(body).encode())


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 256):
        yield body[start : start + 256]


async def send(client, request: BadRequest, job_id: str):
    headers = {"Content-Type": request.content_type} if request.content_type else {}
    content = _chunks(request.body) if request.chunked and request.body else request.body
    response = await client.request(
        request.method, request.path.format(job=job_id), content=content, headers=headers
    )
    if request.chunked:
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
    return response


BAD_REQUESTS = [
    pytest.param(
        BadRequest("POST", "/research", b'{"question": '), 422, "body", id="malformed-json"
    ),
    pytest.param(submit_body(["a question"]), 422, "body", id="body-not-object"),
    pytest.param(submit_body({"question": 5}), 422, "body.question", id="question-not-string"),
    pytest.param(submit_body({}), 422, "body.question", id="question-missing"),
    pytest.param(submit_body({"question": ""}), 422, "body.question", id="question-empty"),
    pytest.param(submit_body({"question": "   "}), 422, "body.question", id="question-blank"),
    pytest.param(
        submit_body({"question": "q" * (MAX_QUESTION_CHARS + 1)}),
        422,
        "body.question",
        id="question-too-long",
    ),
    pytest.param(
        submit_body({"question": QUESTION, "priority": 1}), 422, "body.priority", id="unknown-field"
    ),
    pytest.param(
        BadRequest("POST", "/research", OVERSIZED), 413, "body", id="too-large-content-length"
    ),
    pytest.param(
        BadRequest("POST", "/research", OVERSIZED, chunked=True),
        413,
        "body",
        id="too-large-chunked",
    ),
    pytest.param(
        BadRequest("POST", "/research", b"How do glaciers move?", "text/plain"),
        415,
        "header.Content-Type",
        id="text-plain",
    ),
    pytest.param(
        BadRequest("POST", "/research", json.dumps({"question": QUESTION}).encode(), None),
        415,
        "header.Content-Type",
        id="content-type-missing",
    ),
    pytest.param(
        BadRequest("POST", "/research/{job}/approve", b"{approved}"),
        422,
        "body",
        id="approve-malformed-json",
    ),
    pytest.param(approve_body({"approved": "yes"}), 422, "body.approved", id="approved-string"),
    pytest.param(approve_body({"approved": 1}), 422, "body.approved", id="approved-integer"),
    pytest.param(approve_body({}), 422, "body.approved", id="approved-missing"),
    pytest.param(
        approve_body({"approved": True, "comment": "ok"}),
        422,
        "body.comment",
        id="approve-unknown-field",
    ),
    pytest.param(
        approve_body({"approved": True, "edited_plan": {"steps": []}}),
        422,
        "body.edited_plan.steps",
        id="plan-zero-steps",
    ),
    pytest.param(
        approve_body({"approved": True, "edited_plan": {"steps": [STEP] * 13}}),
        422,
        "body.edited_plan.steps",
        id="plan-too-many-steps",
    ),
    pytest.param(
        approve_body(
            {"approved": True, "edited_plan": {"steps": [{"goal": "g", "queries": [" "]}]}}
        ),
        422,
        "body.edited_plan.steps.0.queries",
        id="plan-blank-query",
    ),
    pytest.param(
        approve_body({"approved": True, "edited_plan": {"steps": [{"goal": "g", "queries": []}]}}),
        422,
        "body.edited_plan.steps.0.queries",
        id="plan-step-without-queries",
    ),
    pytest.param(
        approve_body({"approved": False, "edited_plan": {"steps": [STEP]}}),
        422,
        "body.edited_plan",
        id="plan-with-rejection",
    ),
    pytest.param(
        BadRequest("POST", "/research/{job}/approve", OVERSIZED),
        413,
        "body",
        id="approve-too-large",
    ),
    pytest.param(
        BadRequest("POST", "/research/{job}/approve", b'{"approved": true}', "text/plain"),
        415,
        "header.Content-Type",
        id="approve-text-plain",
    ),
    pytest.param(
        BadRequest("GET", "/research?status=finished"), 422, "query.status", id="list-status"
    ),
    pytest.param(BadRequest("GET", "/research?limit=0"), 422, "query.limit", id="list-limit-zero"),
    pytest.param(
        BadRequest("GET", "/research?limit=ten"), 422, "query.limit", id="list-limit-word"
    ),
    pytest.param(
        BadRequest("GET", "/research?cursor=%25%25"), 422, "query.cursor", id="list-cursor"
    ),
    pytest.param(
        BadRequest("GET", "/research/{job}/events?last_event_id=-1"),
        422,
        "query.last_event_id",
        id="events-negative-id",
    ),
]


@pytest.mark.parametrize(("request_", "status", "field"), BAD_REQUESTS)
async def test_bad_request_gets_problem(client, waiting_job, request_, status, field):
    before = (await client.get(f"/status/{waiting_job}")).json()

    response = await send(client, request_, waiting_job)

    assert_problem(response, status, field)
    after = (await client.get(f"/status/{waiting_job}")).json()
    assert after == before
    listed = (await client.get("/research")).json()["jobs"]
    assert [job["job_id"] for job in listed] == [waiting_job]


async def test_question_at_limit_accepted(client):
    response = await client.post("/research", json={"question": "q" * MAX_QUESTION_CHARS})

    assert response.status_code == 202


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", f"/status/{UNKNOWN_JOB}", None, id="status"),
        pytest.param("POST", f"/research/{UNKNOWN_JOB}/approve", {"approved": True}, id="approve"),
        pytest.param("GET", f"/research/{UNKNOWN_JOB}/events", None, id="events"),
    ],
)
async def test_unknown_job_not_found(client, method, path, body):
    response = await client.request(method, path, json=body)

    problem = assert_problem(response, 404, "path.job_id")
    assert problem["type"] == "urn:scout:problem:job-not-found"
    assert UNKNOWN_JOB in problem["detail"]


def assert_conflict(response, current_status: str) -> None:
    problem = assert_problem(response, 409)
    assert problem["type"] == "urn:scout:problem:illegal-transition"
    assert repr(current_status) in problem["detail"]


async def test_approve_done_job_conflicts(client, waiting_job):
    await approve(client, waiting_job)
    done = await wait_for_status(client, waiting_job, TERMINAL)

    response = await approve(client, waiting_job)

    assert_conflict(response, "done")
    assert (await client.get(f"/status/{waiting_job}")).json() == done


async def test_approve_twice_conflicts(client, waiting_job):
    first = await approve(client, waiting_job)
    second = await approve(client, waiting_job)

    assert first.status_code == 200
    assert second.status_code == 409
    assert (await wait_for_status(client, waiting_job, TERMINAL))["status"] == "done"


async def test_approve_rejected_job_conflicts(client, waiting_job):
    rejected = await client.post(f"/research/{waiting_job}/approve", json={"approved": False})

    response = await approve(client, waiting_job)

    assert rejected.status_code == 200
    assert_conflict(response, "failed")
    assert (await client.get(f"/status/{waiting_job}")).json()["status"] == "failed"


async def test_concurrent_approvals_one_wins(client, waiting_job):
    async with asyncio.timeout(10):
        responses = await asyncio.gather(approve(client, waiting_job), approve(client, waiting_job))

    assert sorted(response.status_code for response in responses) == [200, 409]
    assert (await wait_for_status(client, waiting_job, TERMINAL))["status"] == "done"


async def test_approve_pending_job_conflicts(tmp_path: Path):
    # With one run slot, a job whose research run streams slowly occupies the slot, so the
    # next submitted job stays `pending` until the server stops.
    settings = make_settings(
        tmp_path / "data",
        SCOUT_MAX_CONCURRENT_JOBS="1",
        SCOUT_OFFLINE_REPORT_TOKENS="100000",
        SCOUT_OFFLINE_TOKEN_DELAY_MS="5",
        SCOUT_SHUTDOWN_GRACE_S="0",
    )
    async with run_scout(settings) as scout, scout.client() as client:
        busy = await submit(client, QUESTION)
        await wait_for_status(client, busy, {"awaiting_approval"})
        await approve(client, busy)
        await wait_for_sources(client, busy)

        queued = await submit(client, "Why do glaciers calve into the sea?")
        response = await approve(client, queued)
        view = (await client.get(f"/status/{queued}")).json()

    assert_conflict(response, "pending")
    assert view["status"] == "pending"


async def wait_for_sources(client, job_id: str) -> None:
    """Wait until a running job has gathered sources, which shows that its run has a slot."""
    async with asyncio.timeout(10):
        while True:
            if (await client.get(f"/status/{job_id}")).json()["sources"]:
                return
            await asyncio.sleep(0.02)


async def test_conflicting_edit_leaves_plan(tmp_path: Path):
    settings = make_settings(
        tmp_path / "data",
        SCOUT_OFFLINE_REPORT_TOKENS="100000",
        SCOUT_OFFLINE_TOKEN_DELAY_MS="5",
        SCOUT_SHUTDOWN_GRACE_S="0",
    )
    first_plan = {"steps": [STEP]}
    second_plan = {"steps": [{"goal": "Find out about hives.", "queries": ["varroa mites"]}]}

    async with run_scout(settings) as scout, scout.client() as client:
        job_id = await submit(client, QUESTION)
        await wait_for_status(client, job_id, {"awaiting_approval"})
        first = await approve(client, job_id, edited_plan=first_plan)
        await wait_for_sources(client, job_id)

        second = await approve(client, job_id, edited_plan=second_plan)
        view = (await client.get(f"/status/{job_id}")).json()

    assert first.status_code == 200
    assert second.status_code == 409
    assert view["status"] == "running"
    assert view["plan"] == first_plan
