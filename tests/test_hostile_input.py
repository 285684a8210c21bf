"""Malformed and hostile requests: each gets a clear 4xx and no stored job changes."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import RunningScout
from tests.helpers import submit, wait_for_status

QUESTION = "How do glaciers move?"


async def jobs_snapshot(client: httpx.AsyncClient) -> dict[str, tuple[str, str]]:
    """Return every listed job's status and question, to compare before and after."""
    response = await client.get("/research", params={"limit": 100})
    assert response.status_code == 200
    return {job["job_id"]: (job["status"], job["question"]) for job in response.json()["jobs"]}


@pytest.fixture
async def planned(client: httpx.AsyncClient) -> str:
    """A job awaiting approval, which every bad request must leave as it is."""
    job_id = await submit(client, QUESTION)
    await wait_for_status(client, job_id, {"awaiting_approval"})
    return job_id


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["detail"]
    if field is not None:
        assert field in [error["field"] for error in problem["errors"]], problem


BAD_SUBMISSIONS = [
    pytest.param(
        b'{"question": "\xff\xfe glaciers"}', "application/json", 422, "body", id="invalid-utf8"
    ),
    pytest.param(b"[" * 5000 + b"]" * 5000, "application/json", 422, "body", id="deep-json"),
    pytest.param(b'{"question": 5}', "application/json", 422, "body.question", id="wrong-type"),
    pytest.param(
        b'{"question": "a", "extra": 1}', "application/json", 422, "body.extra", id="unknown-field"
    ),
    pytest.param(b'"just a string"', "application/json", 422, "body", id="not-an-object"),
    pytest.param(b"null", "application/json", 422, "body", id="json-null"),
    pytest.param(b"", "application/json", 422, "body", id="empty-body"),
    pytest.param(
        json.dumps({"question": "glaciers \u0000 move"}).encode(),
        "application/json",
        422,
        "body.question",
        id="nul-character",
    ),
    pytest.param(
        json.dumps({"question": "bell \u0007 ring"}).encode(),
        "application/json",
        422,
        "body.question",
        id="bell-character",
    ),
    pytest.param(
        json.dumps({"question": "x" * 5000}).encode(),
        "application/json",
        422,
        "body.question",
        id="question-over-limit",
    ),
    pytest.param(
        json.dumps({"question": "x" * 100_000}).encode(),
        "application/json",
        413,
        "body",
        id="question-100kb",
    ),
    pytest.param(b'{"question": "a"}', "text/plain", 415, "header.Content-Type", id="text-plain"),
    pytest.param(
        b"question=a", "application/x-www-form-urlencoded", 415, "header.Content-Type", id="form"
    ),
    pytest.param(b"<q>a</q>", "application/xml", 415, "header.Content-Type", id="xml"),
]


@pytest.mark.parametrize(("body", "content_type", "status", "field"), BAD_SUBMISSIONS)
async def test_bad_submission_rejected(
    client: httpx.AsyncClient, planned: str, body: bytes, content_type: str, status: int, field: str
):
    before = await jobs_snapshot(client)

    response = await client.post("/research", content=body, headers={"Content-Type": content_type})

    assert_problem(response, status, field)
    assert await jobs_snapshot(client) == before


async def test_huge_json_array_rejected(client: httpx.AsyncClient, planned: str):
    before = await jobs_snapshot(client)
    body = b'{"question": "a", "pad": [' + b"1," * 500_000 + b"1]}"

    response = await client.post(
        "/research", content=body, headers={"Content-Type": "application/json"}
    )

    assert_problem(response, 413, "body")
    assert await jobs_snapshot(client) == before


async def test_oversized_header_rejected(client: httpx.AsyncClient, planned: str):
    before = await jobs_snapshot(client)

    response = await client.post(
        "/research", json={"question": QUESTION}, headers={"X-Padding": "a" * 200_000}
    )

    assert_problem(response, 431, "header")
    assert await jobs_snapshot(client) == before


@pytest.mark.parametrize(
    "job_id",
    [
        pytest.param("..%2F..%2Fetc%2Fpasswd", id="encoded-traversal"),
        pytest.param("' OR '1'='1", id="sql-quote"),
        pytest.param("1; DROP TABLE jobs; --", id="sql-drop"),
        pytest.param("%00", id="nul"),
        pytest.param("x" * 2000, id="very-long"),
    ],
)
async def test_strange_job_ids_not_found(client: httpx.AsyncClient, planned: str, job_id: str):
    before = await jobs_snapshot(client)

    for method, path in [
        ("GET", f"/status/{job_id}"),
        ("POST", f"/research/{job_id}/approve"),
        ("POST", f"/research/{job_id}/cancel"),
        ("GET", f"/research/{job_id}/events"),
    ]:
        body = {"approved": True} if path.endswith("approve") else None
        response = await client.request(method, path, json=body)
        assert_problem(response, 404)

    assert await jobs_snapshot(client) == before
    assert (await client.get(f"/status/{planned}")).json()["status"] == "awaiting_approval"


async def test_path_traversal_not_routed(client: httpx.AsyncClient, planned: str):
    response = await client.get("/status/../../etc/passwd")

    assert response.status_code == 404
    assert "root:" not in response.text


def plan_of(steps: int) -> dict:
    return {"steps": [{"goal": f"Step {n}", "queries": [f"query {n}"]} for n in range(steps)]}


@pytest.mark.parametrize(
    ("edited_plan", "field"),
    [
        pytest.param(plan_of(0), "body.edited_plan.steps", id="zero-steps"),
        pytest.param(plan_of(13), "body.edited_plan.steps", id="thirteen-steps"),
        pytest.param(plan_of(5000), None, id="thousands-of-steps"),
        pytest.param(
            {"steps": [{"goal": "g", "queries": []}]},
            "body.edited_plan.steps.0.queries",
            id="no-queries",
        ),
        pytest.param(
            {"steps": [{"goal": "g", "queries": ["q"] * 7}]},
            "body.edited_plan.steps.0.queries",
            id="seven-queries",
        ),
        pytest.param(
            {"steps": [{"goal": "", "queries": ["q"]}]},
            "body.edited_plan.steps.0.goal",
            id="empty-goal",
        ),
        pytest.param(
            {"steps": [{"goal": "g" * 501, "queries": ["q"]}]},
            "body.edited_plan.steps.0.goal",
            id="long-goal",
        ),
        pytest.param(
            {"steps": [{"goal": "g", "queries": ["q"], "tool": "x"}]},
            "body.edited_plan.steps.0.tool",
            id="unknown-step-field",
        ),
        pytest.param({"steps": "all of them"}, "body.edited_plan.steps", id="steps-not-a-list"),
    ],
)
async def test_bad_edited_plan_rejected(
    client: httpx.AsyncClient, planned: str, edited_plan: dict, field: str | None
):
    before = (await client.get(f"/status/{planned}")).json()

    response = await client.post(
        f"/research/{planned}/approve", json={"approved": True, "edited_plan": edited_plan}
    )

    assert response.status_code in (413, 422), response.text
    assert_problem(response, response.status_code, field)
    after = (await client.get(f"/status/{planned}")).json()
    assert after["status"] == "awaiting_approval"
    assert after["plan"] == before["plan"]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("-1", id="negative"),
        pytest.param("99999999999999999999999", id="huge"),
        pytest.param("abc", id="not-a-number"),
        pytest.param("1.5", id="fraction"),
        pytest.param("٣", id="arabic-digit"),
    ],
)
async def test_bad_last_event_id_rejected(client: httpx.AsyncClient, planned: str, value: str):
    header = await client.get(
        f"/research/{planned}/events", headers={"Last-Event-ID": value.encode()}
    )
    query = await client.get(f"/research/{planned}/events", params={"last_event_id": value})

    assert_problem(header, 422, "header.Last-Event-ID")
    assert_problem(query, 422, "query.last_event_id")
    assert (await client.get(f"/status/{planned}")).json()["status"] == "awaiting_approval"


async def test_service_healthy_after_hostile_requests(
    scout: RunningScout, client: httpx.AsyncClient, planned: str
):
    await client.post(
        "/research", content=b"\xff" * 1000, headers={"Content-Type": "application/json"}
    )
    await client.post(
        "/research", content=b"[" * 100_000, headers={"Content-Type": "application/json"}
    )

    health = await client.get("/health")
    job_id = await submit(client, QUESTION)

    assert health.status_code == 200
    assert (await wait_for_status(client, job_id, {"awaiting_approval"}))["plan"]
