"""Client-side helpers the tests share: polling a job until it reaches a status."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

TERMINAL = frozenset({"done", "partial", "failed"})
PROJECT_DIR = Path(__file__).resolve().parent.parent
SCOUT_COMMAND = (sys.executable, "-c", "from app.cli import main; raise SystemExit(main())")


async def run_command(
    *argv: str, timeout_s: float, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run a command in the project folder and return its exit status, stdout and stderr.

    The Scout server of a test runs on the test's event loop, so the child is awaited
    rather than run with the blocking subprocess.run. It is killed after `timeout_s`.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=PROJECT_DIR,
        env=None if env is None else dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def wait_for_status(
    client: httpx.AsyncClient, job_id: str, statuses: Iterable[str], timeout: float = 20.0
) -> dict[str, Any]:
    """Poll GET /status until the job is in one of `statuses`; return its view."""
    targets = set(statuses)
    view: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get(f"/status/{job_id}")
            assert response.status_code == 200, response.text
            view = response.json()
            if view["status"] in targets:
                return view
            await asyncio.sleep(0.02)


async def submit(client: httpx.AsyncClient, question: str, **headers: str) -> str:
    """Submit a question and return the new job's id."""
    response = await client.post("/research", json={"question": question}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


async def approve(client: httpx.AsyncClient, job_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/research/{job_id}/approve", json={"approved": True, **body})
