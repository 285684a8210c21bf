"""The fake NIM and Tavily servers, driven by the real ChatNVIDIA and AsyncTavilyClient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_nvidia_ai_endpoints import ChatNVIDIA
from tavily import AsyncTavilyClient, InvalidAPIKeyError, UsageLimitExceededError

from graph.plan import ResearchPlan
from graph.providers.base import ProviderError, SearchHit
from graph.providers.nvidia import PLANNER_PROMPT, WRITER_PROMPT, NvidiaModel
from graph.providers.tavily import TavilySearch
from graph.state import Source
from tests.fakes import FakeNim, FakeTavily, make_nim_app, make_tavily_app, serve_app

API_KEY = "test-key"
MODEL = "test/model"


@pytest.fixture
async def nim() -> AsyncIterator[tuple[FakeNim, str]]:
    state = FakeNim()
    async with serve_app(make_nim_app(state)) as base_url:
        yield state, base_url


@pytest.fixture
async def tavily() -> AsyncIterator[tuple[FakeTavily, str]]:
    state = FakeTavily()
    async with serve_app(make_tavily_app(state)) as base_url:
        yield state, base_url


def make_chat(base_url: str, api_key: str | None = API_KEY) -> ChatNVIDIA:
    return ChatNVIDIA(
        model=MODEL,
        api_key=api_key,
        base_url=f"{base_url}/v1",
        usage_telemetry_enabled=False,
    )


def planner_messages() -> list:
    return [SystemMessage(PLANNER_PROMPT), HumanMessage("How does Scout resume jobs?")]


def writer_messages() -> list:
    return [SystemMessage(WRITER_PROMPT), HumanMessage("Question: How does Scout resume jobs?")]


async def test_serve_app_stops_on_exit() -> None:
    async with serve_app(make_nim_app(FakeNim())) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{base_url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
            )
        assert response.status_code == 200

    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{base_url}/v1/models")


async def test_chat_ainvoke_returns_plan(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim

    reply = await make_chat(base_url).ainvoke(planner_messages())

    assert json.loads(reply.text) == state.plan
    assert state.planner_calls == 1
    assert state.writer_calls == 0


async def test_chat_ainvoke_sends_key_and_model(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim

    await make_chat(base_url).ainvoke(planner_messages())

    [request] = state.requests
    assert request.api_key == API_KEY
    assert request.role == "planner"
    assert request.body["model"] == MODEL
    assert not request.body.get("stream")


async def test_chat_astream_yields_tokens(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim

    texts = [chunk.text async for chunk in make_chat(base_url).astream(writer_messages())]

    assert [text for text in texts if text] == state.report_tokens
    assert "".join(texts) == state.report_text
    assert "[1]" in state.report_text
    assert "[2]" in state.report_text
    assert state.writer_calls == 1
    assert state.requests[0].role == "writer"
    assert state.requests[0].body["stream"] is True


async def test_nim_stream_event_framing(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{base_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )

    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(state.report_tokens)


async def test_chat_rpm_limit_raises_429(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    state.rpm_limit = 1
    state.window_s = 1.0
    chat = make_chat(base_url)

    await chat.ainvoke(planner_messages())
    with pytest.raises(Exception) as caught:
        await chat.ainvoke(planner_messages())

    assert str(caught.value).startswith("[429]")
    assert state.throttled == 1
    assert state.planner_calls == 1


async def test_chat_rpm_limit_concurrent_calls(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    state.rpm_limit = 2
    state.window_s = 2.0
    chat = make_chat(base_url)

    outcomes = await asyncio.gather(
        *(chat.ainvoke(planner_messages()) for _ in range(5)), return_exceptions=True
    )

    errors = [str(outcome) for outcome in outcomes if isinstance(outcome, Exception)]
    assert len(errors) == 3
    assert all(error.startswith("[429]") for error in errors)
    assert state.throttled == 3
    assert state.planner_calls == 2


async def test_nim_retry_after_then_recovers(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    state.rpm_limit = 2
    state.window_s = 1.0
    url = f"{base_url}/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}]}
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async with httpx.AsyncClient() as client:
        statuses = [
            (await client.post(url, json=body, headers=headers)).status_code for _ in range(2)
        ]
        throttled = await client.post(url, json=body, headers=headers)
        retry_after_s = float(throttled.headers["Retry-After"])
        await asyncio.sleep(retry_after_s)
        after_wait = await client.post(url, json=body, headers=headers)

    assert statuses == [200, 200]
    assert throttled.status_code == 429
    assert 0 < retry_after_s <= 1.0
    assert after_wait.status_code == 200
    assert state.throttled == 1
    assert len(state.requests) == 4


async def test_chat_fail_status_raises(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    state.fail_status = 500

    with pytest.raises(Exception) as caught:
        await make_chat(base_url).ainvoke(planner_messages())

    assert str(caught.value).startswith("[500]")
    assert state.planner_calls == 0


async def test_chat_without_key_gets_401(
    nim: tuple[FakeNim, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, base_url = nim
    state.expected_api_key = API_KEY
    monkeypatch.delenv("NVIDIA_API_KEY", raising=False)

    with pytest.raises(Exception) as caught:
        await make_chat(base_url, api_key=None).ainvoke(planner_messages())

    assert str(caught.value).startswith("[401]")
    # Without a key, ChatNVIDIA 1.5 still sends its header template's placeholder token.
    assert state.requests[0].api_key != API_KEY
    assert state.planner_calls == 0


async def test_nim_missing_bearer_gets_401(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi."}]}

    async with httpx.AsyncClient() as client:
        response = await client.post(f"{base_url}/v1/chat/completions", json=body)

    assert response.status_code == 401
    assert response.json()["title"] == "Unauthorized"
    assert state.requests[0].api_key is None


async def test_chat_available_models_lists_model(nim: tuple[FakeNim, str]) -> None:
    _, base_url = nim
    chat = make_chat(base_url)

    # The listing uses the blocking requests client, so it must not run on the event loop
    # that serves the fake.
    models = await asyncio.to_thread(lambda: chat.available_models)

    assert [model.id for model in models] == [MODEL]


async def test_tavily_search_returns_generated(tavily: tuple[FakeTavily, str]) -> None:
    _, base_url = tavily
    client = AsyncTavilyClient(api_key=API_KEY, api_base_url=base_url)

    response = await client.search("checkpoint resume", max_results=3)
    await client.close()

    urls = [result["url"] for result in response["results"]]
    assert urls == [f"https://example.test/checkpoint-resume/{rank}" for rank in (1, 2, 3)]
    assert all("checkpoint resume" in result["content"] for result in response["results"])
    assert response["query"] == "checkpoint resume"


async def test_tavily_search_records_request(tavily: tuple[FakeTavily, str]) -> None:
    state, base_url = tavily
    client = AsyncTavilyClient(api_key=API_KEY, api_base_url=base_url)

    response = await client.search("x", max_results=2)
    await client.close()

    [request] = state.requests
    assert request.query == "x"
    assert request.max_results == 2
    assert request.api_key == API_KEY
    assert len(response["results"]) == 2


async def test_tavily_results_by_query_match(tavily: tuple[FakeTavily, str]) -> None:
    state, base_url = tavily
    state.results_by_query["sqlite"] = [
        {"title": "SQLite WAL", "url": "https://example.test/wal", "content": "WAL mode."}
    ]
    client = AsyncTavilyClient(api_key=API_KEY, api_base_url=base_url)

    response = await client.search("How does SQLite store checkpoints?", max_results=5)
    await client.close()

    [result] = response["results"]
    assert result["url"] == "https://example.test/wal"
    assert result["score"] == 0.9
    assert result["raw_content"] is None


async def test_tavily_fail_query_raises(tavily: tuple[FakeTavily, str]) -> None:
    state, base_url = tavily
    state.fail_queries = {"broken"}
    client = AsyncTavilyClient(api_key=API_KEY, api_base_url=base_url)

    with pytest.raises(httpx.HTTPStatusError) as caught:
        await client.search("a broken query", max_results=3)
    healthy = await client.search("a healthy query", max_results=3)
    await client.close()

    assert caught.value.response.status_code == 500
    assert len(healthy["results"]) == 3


async def test_tavily_fail_status_429_raises(tavily: tuple[FakeTavily, str]) -> None:
    state, base_url = tavily
    state.fail_status = 429
    client = AsyncTavilyClient(api_key=API_KEY, api_base_url=base_url)

    with pytest.raises(UsageLimitExceededError):
        await client.search("x", max_results=3)
    await client.close()


async def test_tavily_wrong_key_raises(tavily: tuple[FakeTavily, str]) -> None:
    state, base_url = tavily
    state.expected_api_key = API_KEY
    client = AsyncTavilyClient(api_key="other-key", api_base_url=base_url)

    with pytest.raises(InvalidAPIKeyError):
        await client.search("x", max_results=3)
    await client.close()


def make_model(base_url: str) -> NvidiaModel:
    return NvidiaModel.from_settings(api_key=API_KEY, model=MODEL, base_url=base_url, timeout_s=10)


async def test_nvidia_model_drafts_plan(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim

    plan = await make_model(f"{base_url}/v1").draft_plan("How does Scout resume jobs?")

    assert plan == ResearchPlan.model_validate(state.plan)
    assert state.requests[0].api_key == API_KEY


async def test_nvidia_model_retries_invalid_plan(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    state.plan_reply_override = ["This is not JSON."]

    plan = await make_model(base_url).draft_plan("How does Scout resume jobs?")

    assert plan == ResearchPlan.model_validate(state.plan)
    assert state.planner_calls == 2
    retry_prompt = state.requests[1].body["messages"][-1]["content"]
    assert "not a valid plan" in retry_prompt


async def test_nvidia_model_invalid_plans_raise(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    state.plan_reply_override = '{"steps": []}'

    with pytest.raises(ProviderError, match="valid plan"):
        await make_model(base_url).draft_plan("How does Scout resume jobs?")

    assert state.planner_calls == 2


async def test_nvidia_model_streams_report(nim: tuple[FakeNim, str]) -> None:
    state, base_url = nim
    plan = ResearchPlan.model_validate(state.plan)
    sources = [
        Source(id=1, url="https://example.test/a", title="A", content="Checkpoints.", query="q"),
        Source(id=2, url="https://example.test/b", title="B", content="Citations.", query="q"),
    ]

    model = make_model(base_url)
    pieces = [piece async for piece in model.write_report("Q?", plan, sources)]

    assert pieces == state.report_tokens
    assert state.writer_calls == 1
    prompt = state.requests[0].body["messages"][-1]["content"]
    assert "[1] A (https://example.test/a)" in prompt


async def test_tavily_search_provider_returns_hits(tavily: tuple[FakeTavily, str]) -> None:
    state, base_url = tavily
    search = TavilySearch(api_key=API_KEY, base_url=base_url)

    hits = await search.search("resume jobs", max_results=2)
    await search.client.close()

    assert hits == [
        SearchHit(url=result["url"], title=result["title"], content=result["content"])
        for result in state.results_for("resume jobs")[:2]
    ]
    assert state.requests[0].max_results == 2
