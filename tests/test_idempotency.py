"""Idempotency-Key on POST /research: a retried submission returns the first job."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import assert_problem

QUESTION = {"question": "How does a sourdough starter leaven bread?"}
DUPLICATES = 20


async def post_with_key(client, key: str | bytes, body: dict = QUESTION):
    return await client.post("/research", json=body, headers={"Idempotency-Key": key})


async def listed_job_ids(client) -> list[str]:
    response = await client.get("/research")
    assert response.status_code == 200
    return [job["job_id"] for job in response.json()["jobs"]]


async def test_same_key_same_body_replays(client):
    first = await post_with_key(client, "order-1")
    second = await post_with_key(client, "order-1")

    assert first.status_code == 202
    assert second.status_code == 202
    assert second.json()["job_id"] == first.json()["job_id"]
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["location"] == first.headers["location"]
    assert await listed_job_ids(client) == [first.json()["job_id"]]


async def test_same_key_different_body_rejected(client):
    first = await post_with_key(client, "order-2")
    second = await post_with_key(client, "order-2", {"question": "Why do glaciers calve?"})

    assert first.status_code == 202
    problem = assert_problem(second, 422, "header.Idempotency-Key")
    assert problem["type"] == "urn:scout:problem:idempotency-mismatch"
    assert await listed_job_ids(client) == [first.json()["job_id"]]


async def test_different_keys_create_two_jobs(client):
    first = await post_with_key(client, "order-3")
    second = await post_with_key(client, "order-4")

    assert first.status_code == 202
    assert second.status_code == 202
    assert first.json()["job_id"] != second.json()["job_id"]
    assert len(await listed_job_ids(client)) == 2


async def test_concurrent_duplicates_create_one_job(client):
    async with asyncio.timeout(20):
        responses = await asyncio.gather(
            *(post_with_key(client, "order-5") for _ in range(DUPLICATES))
        )

    job_ids = {response.json()["job_id"] for response in responses}
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert [response.status_code for response in responses] == [202] * DUPLICATES
    assert len(job_ids) == 1
    assert len(replayed) == DUPLICATES - 1
    assert await listed_job_ids(client) == list(job_ids)


async def test_key_at_length_limit_accepted(client):
    response = await post_with_key(client, "k" * 200)

    assert response.status_code == 202


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * 201, id="too-long"),
        pytest.param("clé-1".encode(), id="non-ascii"),
        pytest.param("", id="empty"),
    ],
)
async def test_invalid_key_rejected(client, key):
    response = await post_with_key(client, key)

    assert_problem(response, 422, "header.Idempotency-Key")
    assert await listed_job_ids(client) == []
