"""Helpers for the lifecycle, error, client and graph tests: event replay, problem checks,
citations, and settings that point the real NIM and Tavily clients at the fakes."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from httpx_sse import aconnect_sse

from app.config import Settings
from tests.conftest import make_settings
from tests.fakes import FakeNim, FakeTavily, make_nim_app, make_tavily_app, serve_app

NIM_API_KEY = "test-nim-key"
TAVILY_API_KEY = "test-tavily-key"
NIM_MODEL = "test/model"
PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "errors"}
CITATION = re.compile(r"\[(\d+)\]")
REPLAY_TIMEOUT_S = 20.0


async def replay_events(client: httpx.AsyncClient, job_id: str) -> list[tuple[str, Any]]:
    """Read a job's event stream up to its `end` event and return (event name, data) pairs."""
    events: list[tuple[str, Any]] = []
    async with asyncio.timeout(REPLAY_TIMEOUT_S):
        async with aconnect_sse(client, "GET", f"/research/{job_id}/events") as source:
            async for event in source.aiter_sse():
                events.append((event.event, orjson.loads(event.data) if event.data else None))
                if event.event == "end":
                    break
    return events


def event_data(events: list[tuple[str, Any]], name: str) -> list[Any]:
    """Return the data of every event called `name`, in stream order."""
    return [data for event, data in events if event == name]


def cited_ids(report: str) -> list[int]:
    """Return every `[n]` citation number in `report`, in order, repeats included."""
    return [int(number) for number in CITATION.findall(report)]


def corpus_file(url: str) -> str:
    """Return the file of a local source url: `corpus/glaciers.md#moraines` is `glaciers.md`."""
    return url.removeprefix("corpus/").partition("#")[0]


def assert_problem(
    response: httpx.Response, status: int, field: str | None = None
) -> dict[str, Any]:
    """Check that `response` is an RFC 9457 problem with `status` that names `field`.

    An error on a part of `field`, such as `body.plan.steps.0` for `body.plan.steps`,
    also names it.
    """
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert PROBLEM_KEYS <= problem.keys(), problem
    assert problem["type"].startswith("urn:scout:problem:")
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    if field is not None:
        fields = [error["field"] for error in problem["errors"]]
        assert any(name == field or name.startswith(f"{field}.") for name in fields), problem
    return problem


def nvidia_settings(data_dir: Path, nim_url: str, **env: str) -> Settings:
    """Settings whose model is the real ChatNVIDIA client, pointed at a fake NIM at `nim_url`."""
    fake_env = {
        "SCOUT_LLM": "nvidia",
        "NVIDIA_API_KEY": NIM_API_KEY,
        "NVIDIA_BASE_URL": f"{nim_url}/v1",
        "SCOUT_MODEL": NIM_MODEL,
        # The fakes reply at once, so neither pacing nor retry back-off needs real time.
        "SCOUT_LLM_RPM": "60000",
        "SCOUT_RETRY_BASE_S": "0.01",
    }
    return make_settings(data_dir, **{**fake_env, **env})


@contextlib.asynccontextmanager
async def serve_fake_nim() -> AsyncIterator[tuple[FakeNim, str]]:
    """Serve a fake NIM that accepts only NIM_API_KEY, and yield its state and base URL."""
    state = FakeNim(model_id=NIM_MODEL, expected_api_key=NIM_API_KEY)
    async with serve_app(make_nim_app(state)) as base_url:
        yield state, base_url


@contextlib.asynccontextmanager
async def serve_fake_tavily() -> AsyncIterator[tuple[FakeTavily, str]]:
    """Serve a fake Tavily API that accepts only TAVILY_API_KEY, and yield its state and URL."""
    state = FakeTavily(expected_api_key=TAVILY_API_KEY)
    async with serve_app(make_tavily_app(state)) as base_url:
        yield state, base_url
