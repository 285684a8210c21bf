"""Model pacing, 429 handling and provider faults, with the real ChatNVIDIA and Tavily clients.

The fake NIM's rate limit is scaled down from requests per minute to requests per second,
and SCOUT_LLM_RPM is scaled the same way, so each test takes seconds instead of minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningScout, run_scout
from tests.fakes import FakeNim, FakeTavily
from tests.helpers import TERMINAL, approve, submit, wait_for_status
from tests.support import TAVILY_API_KEY, nvidia_settings, serve_fake_nim, serve_fake_tavily

TEST_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 30.0
JOBS = 5
WINDOW_S = 1.0
# Guardrails make model calls of their own, which would change the request counts below.
BASE_ENV = {"SCOUT_GUARDRAILS": "off", "SCOUT_EVENT_POLL_S": "0.05"}


def questions(count: int) -> list[str]:
    return [f"How does research job {n} resume after a crash?" for n in range(1, count + 1)]


@contextlib.asynccontextmanager
async def scout_on_fakes(
    tmp_path: Path, **env: str
) -> AsyncIterator[tuple[RunningScout, httpx.AsyncClient, FakeNim, FakeTavily]]:
    """Run Scout in-process on the fake NIM and the fake Tavily API, with a client."""
    async with serve_fake_nim() as (nim, nim_url), serve_fake_tavily() as (tavily, tavily_url):
        settings = nvidia_settings(
            tmp_path / "data",
            nim_url,
            SCOUT_SEARCH="tavily",
            TAVILY_API_KEY=TAVILY_API_KEY,
            TAVILY_BASE_URL=tavily_url,
            **{**BASE_ENV, **env},
        )
        async with run_scout(settings) as scout, scout.client() as client:
            yield scout, client, nim, tavily


async def run_job(client: httpx.AsyncClient, question: str) -> dict[str, Any]:
    """Submit `question`, approve its plan once drafted, and return the finished job's view."""
    job_id = await submit(client, question)
    view = await wait_for_status(
        client, job_id, {"awaiting_approval", *TERMINAL}, timeout=JOB_TIMEOUT_S
    )
    if view["status"] == "awaiting_approval":
        response = await approve(client, job_id)
        assert response.status_code == 200, response.text
        view = await wait_for_status(client, job_id, TERMINAL, timeout=JOB_TIMEOUT_S)
    return view


async def run_jobs(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """Run `count` jobs at once and return their finished views in submission order."""
    return list(await asyncio.gather(*(run_job(client, q) for q in questions(count))))


def max_in_window(times: list[float], window_s: float) -> int:
    """Return the largest number of `times` that fall within any `window_s`-long window."""
    ordered = sorted(times)
    largest = 0
    start = 0
    for end, time in enumerate(ordered):
        while ordered[start] <= time - window_s:
            start += 1
        largest = max(largest, end - start + 1)
    return largest


def requests_with_role(nim: FakeNim, role: str) -> int:
    return sum(1 for request in nim.requests if request.role == role)


# --- Pacing and 429 ------------------------------------------------------------------------


@pytest.mark.slow
async def test_pacer_keeps_under_limit(tmp_path: Path) -> None:
    # 6 requests a second is 360 a minute, and the pacer is set a little below that, to 300.
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        scout_on_fakes(tmp_path, SCOUT_LLM_RPM="300") as (_, client, nim, _),
    ):
        nim.rpm_limit = 6
        nim.window_s = WINDOW_S
        views = await run_jobs(client, JOBS)

    assert [view["status"] for view in views] == ["done"] * JOBS, views
    assert nim.throttled == 0
    assert requests_with_role(nim, "planner") == JOBS
    assert requests_with_role(nim, "writer") == JOBS
    # A token bucket of size 1 at 5 a second sends at most 5 + 1 requests in any second.
    assert max_in_window([r.received_at for r in nim.requests], WINDOW_S) <= nim.rpm_limit


@pytest.mark.slow
async def test_over_limit_retries_after_429(tmp_path: Path) -> None:
    # The pacer allows 100 requests a second against a limit of 3, so requests get 429.
    # The backoff alone would spend all six tries within 0.31 s, well inside the 1 s
    # window, so every job finishing shows that the clients waited as Retry-After requested.
    env = {"SCOUT_LLM_RPM": "6000", "SCOUT_RETRY_BASE_S": "0.01", "SCOUT_LLM_MAX_TRIES": "6"}
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        scout_on_fakes(tmp_path, **env) as (_, client, nim, _),
    ):
        nim.rpm_limit = 3
        nim.window_s = WINDOW_S
        views = await run_jobs(client, JOBS)

    assert [view["status"] for view in views] == ["done"] * JOBS, views
    assert nim.throttled > 0
    assert nim.planner_calls == JOBS
    assert nim.writer_calls == JOBS
    assert len(nim.requests) == 2 * JOBS + nim.throttled


# --- Model faults --------------------------------------------------------------------------


async def test_failing_writer_ends_partial(tmp_path: Path) -> None:
    env = {"SCOUT_LLM_MAX_TRIES": "2", "SCOUT_RETRY_BASE_S": "0.01"}
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        scout_on_fakes(tmp_path, **env) as (_, client, nim, _),
    ):
        nim.writer_fail_status = 500
        (view,) = await run_jobs(client, 1)

    assert view["status"] == "partial", view
    assert "500" in view["error"]
    assert view["plan"] is not None
    assert view["sources"]
    assert view["report"] == ""
    assert requests_with_role(nim, "writer") == 2


async def test_failing_planner_fails_job(tmp_path: Path) -> None:
    env = {"SCOUT_LLM_MAX_TRIES": "2", "SCOUT_RETRY_BASE_S": "0.01"}
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        scout_on_fakes(tmp_path, **env) as (_, client, nim, tavily),
    ):
        nim.fail_status = 500
        (view,) = await run_jobs(client, 1)

    assert view["status"] == "failed", view
    assert "500" in view["error"]
    assert view["plan"] is None
    assert view["sources"] == []
    assert requests_with_role(nim, "planner") == 2
    assert tavily.requests == []


# --- Search faults -------------------------------------------------------------------------

TWO_QUERY_PLAN = {
    "steps": [
        {
            "goal": "Find out how research agents resume interrupted jobs.",
            "queries": ["research agent checkpoint resume", "langgraph sqlite checkpointer"],
        },
        {
            "goal": "Find out how research reports cite their sources.",
            "queries": ["numbered citations in generated reports", "citation formats"],
        },
    ]
}


def searches_for(tavily: FakeTavily, query: str) -> int:
    return sum(1 for request in tavily.requests if request.query == query)


def source_queries(view: dict[str, Any]) -> set[str]:
    return {source["query"] for source in view["sources"]}


async def test_search_500_once_is_retried(tmp_path: Path) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        scout_on_fakes(tmp_path, SCOUT_RETRY_BASE_S="0.01") as (_, client, nim, tavily),
    ):
        nim.plan = TWO_QUERY_PLAN
        tavily.flaky_queries = {"langgraph sqlite": 1}
        (view,) = await run_jobs(client, 1)

    assert view["status"] == "done", view
    assert view["error"] is None
    assert searches_for(tavily, "langgraph sqlite checkpointer") == 2
    assert "langgraph sqlite checkpointer" in source_queries(view)


async def test_search_query_always_failing_job_done(tmp_path: Path) -> None:
    env = {"SCOUT_RETRY_BASE_S": "0.01", "SCOUT_SEARCH_MAX_TRIES": "3"}
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        scout_on_fakes(tmp_path, **env) as (_, client, nim, tavily),
    ):
        nim.plan = TWO_QUERY_PLAN
        tavily.fail_queries = {"citation formats"}
        (view,) = await run_jobs(client, 1)

    assert view["status"] == "done", view
    assert searches_for(tavily, "citation formats") == 3
    assert "citation formats" not in source_queries(view)
    assert source_queries(view) == {
        "research agent checkpoint resume",
        "langgraph sqlite checkpointer",
        "numbered citations in generated reports",
    }
