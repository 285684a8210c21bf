"""Whole jobs through the real ChatNVIDIA and AsyncTavilyClient, pointed at the fake servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.config import Settings
from tests.conftest import run_scout
from tests.fakes import FakeNim, FakeTavily
from tests.fakes.tavily import generate_result
from tests.helpers import TERMINAL, approve, submit, wait_for_status
from tests.support import (
    NIM_API_KEY,
    NIM_MODEL,
    TAVILY_API_KEY,
    event_data,
    nvidia_settings,
    replay_events,
    serve_fake_nim,
    serve_fake_tavily,
)

QUESTION = "How do research agents resume interrupted jobs and cite sources?"


@pytest.fixture
async def nim() -> AsyncIterator[tuple[FakeNim, str]]:
    async with serve_fake_nim() as served:
        yield served


@pytest.fixture
async def tavily() -> AsyncIterator[tuple[FakeTavily, str]]:
    async with serve_fake_tavily() as served:
        yield served


@pytest.fixture
def real_settings(tmp_path: Path, nim, tavily) -> Settings:
    _, nim_url = nim
    _, tavily_url = tavily
    return nvidia_settings(
        tmp_path / "data",
        nim_url,
        SCOUT_SEARCH="tavily",
        TAVILY_API_KEY=TAVILY_API_KEY,
        TAVILY_BASE_URL=tavily_url,
    )


def plan_queries(plan: dict) -> list[str]:
    return [query for step in plan["steps"] for query in step["queries"]]


async def run_job(settings: Settings) -> tuple[dict, dict, list]:
    """Submit QUESTION, approve its plan and wait for the job to end.

    Returns the view awaiting approval, the final view and the replayed events.
    """
    async with run_scout(settings) as scout, scout.client() as client:
        job_id = await submit(client, QUESTION)
        waiting = await wait_for_status(client, job_id, {"awaiting_approval"})
        response = await approve(client, job_id)
        assert response.status_code == 200, response.text
        view = await wait_for_status(client, job_id, TERMINAL)
        events = await replay_events(client, job_id)
    return waiting, view, events


async def test_real_clients_job_done(real_settings, nim, tavily):
    nim_state, _ = nim
    tavily_state, _ = tavily

    waiting, view, events = await run_job(real_settings)

    expected_urls = [
        generate_result(query, rank)["url"]
        for query in plan_queries(nim_state.plan)
        for rank in (1, 2, 3)
    ]
    assert waiting["plan"] == nim_state.plan
    assert view["status"] == "done", view
    assert view["model"] == NIM_MODEL
    assert view["search"] == "tavily"
    assert view["notice"] is None
    assert [source["url"] for source in view["sources"]] == expected_urls
    assert view["report"] == nim_state.report_text
    assert view["citations"] == [1, 2]
    assert [data["text"] for data in event_data(events, "token")] == nim_state.report_tokens
    assert nim_state.planner_calls == 1
    assert nim_state.writer_calls == 1
    assert [request.query for request in tavily_state.requests] == plan_queries(nim_state.plan)


async def test_real_clients_send_keys(real_settings, nim, tavily):
    nim_state, _ = nim
    tavily_state, _ = tavily

    await run_job(real_settings)

    assert nim_state.requests
    assert {request.api_key for request in nim_state.requests} == {NIM_API_KEY}
    assert {request.body["model"] for request in nim_state.requests} == {NIM_MODEL}
    assert tavily_state.requests
    assert {request.api_key for request in tavily_state.requests} == {TAVILY_API_KEY}


async def test_one_failing_search_still_done(real_settings, nim, tavily):
    nim_state, _ = nim
    tavily_state, _ = tavily
    tavily_state.fail_queries = {"sqlite"}
    failing = "langgraph sqlite checkpointer"
    assert failing in plan_queries(nim_state.plan)

    _, view, _ = await run_job(real_settings)

    assert view["status"] == "done", view
    assert view["sources"]
    assert failing in [request.query for request in tavily_state.requests]
    assert failing not in {source["query"] for source in view["sources"]}


async def test_all_step_searches_fail_job(real_settings, nim, tavily):
    tavily_state, _ = tavily
    # Both queries of the fake plan's first step contain "checkpoint".
    tavily_state.fail_queries = {"checkpoint"}

    _, view, _ = await run_job(real_settings)

    assert view["status"] == "failed", view
    assert "Every search of step 1 failed" in view["error"]
    assert view["sources"] == []
