"""Client-side helpers the tests share: polling a job until it reaches a status."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx

TERMINAL = frozenset({"done", "partial", "failed"})


async def wait_for_status(
    client: httpx.AsyncClient, job_id: str, statuses: Iterable[str], timeout: float = 20.0
) -> dict[str, Any]:
    """Poll GET /status until the job is in one of `statuses`; return its view."""
    wanted = set(statuses)
    view: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(f"/status/{job_id}")
            assert response.status_code == 200, response.text
            view = response.json()
            if view["status"] in wanted:
                return view
            await asyncio.sleep(0.02)


async def submit(client: httpx.AsyncClient, question: str, **headers: str) -> str:
    """Submit a question and return the new job's id."""
    response = await client.post("/research", json={"question": question}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


async def approve(client: httpx.AsyncClient, job_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/research/{job_id}/approve", json={"approved": True, **body})
