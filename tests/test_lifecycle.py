"""A job's whole life through the HTTP API, offline: plan, approval, research and report."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from graph.providers.offline import OFFLINE_NOTICE
from tests.conftest import make_settings, run_scout
from tests.fakes import FakeNim
from tests.helpers import TERMINAL, approve, submit, wait_for_status
from tests.support import (
    assert_problem,
    cited_ids,
    corpus_file,
    event_data,
    nvidia_settings,
    replay_events,
    serve_fake_nim,
)

LIGHTHOUSE_QUESTION = "How does a lighthouse Fresnel lens focus its beam?"
GLACIER_PLAN = {
    "steps": [
        {"goal": "Find out how glaciers move.", "queries": ["glacier crevasse meltwater"]},
        {"goal": "Find out what moraines are.", "queries": ["moraine debris", "calving ice"]},
    ]
}


@pytest.fixture
async def nim() -> AsyncIterator[tuple[FakeNim, str]]:
    async with serve_fake_nim() as served:
        yield served


async def test_job_offline_reaches_done(client):
    created = await client.post("/research", json={"question": LIGHTHOUSE_QUESTION})
    assert created.status_code == 202
    assert created.json()["status"] == "pending"
    job_id = created.json()["job_id"]

    waiting = await wait_for_status(client, job_id, {"awaiting_approval"})
    assert waiting["plan"]["steps"]
    assert waiting["sources"] == []
    assert waiting["report"] is None

    approved = await approve(client, job_id)
    assert approved.status_code == 200
    assert approved.json()["status"] == "running"

    view = await wait_for_status(client, job_id, TERMINAL)
    assert view["status"] == "done", view
    assert view["error"] is None
    assert view["sources"]
    assert {corpus_file(source["url"]) for source in view["sources"]} == {"lighthouses.md"}

    events = await replay_events(client, job_id)
    statuses = [data["status"] for data in event_data(events, "status")]
    assert statuses == ["pending", "awaiting_approval", "running", "done"]


async def test_done_report_cites_sources(client):
    job_id = await submit(client, LIGHTHOUSE_QUESTION)
    await wait_for_status(client, job_id, {"awaiting_approval"})
    await approve(client, job_id)

    view = await wait_for_status(client, job_id, TERMINAL)

    source_ids = {source["id"] for source in view["sources"]}
    cited = cited_ids(view["report"])
    assert cited
    assert set(cited) <= source_ids
    assert set(view["citations"]) == set(cited)
    assert len(view["citations"]) == len(set(view["citations"]))


async def test_done_view_has_timings_notice(client):
    job_id = await submit(client, LIGHTHOUSE_QUESTION)
    await wait_for_status(client, job_id, {"awaiting_approval"})
    await approve(client, job_id)

    view = await wait_for_status(client, job_id, TERMINAL)

    timings = view["timings"]
    assert set(timings) == {"planning_s", "awaiting_approval_s", "research_s", "total_s"}
    assert all(value is not None and value >= 0 for value in timings.values()), timings
    assert timings["total_s"] >= timings["research_s"]
    assert view["model"] == "offline"
    assert view["notice"] == OFFLINE_NOTICE
    assert "offline provider" in view["notice"]
    assert OFFLINE_NOTICE in view["report"]


async def test_created_job_has_location(client):
    response = await client.post("/research", json={"question": LIGHTHOUSE_QUESTION})

    job_id = response.json()["job_id"]
    assert response.status_code == 202
    assert response.headers["location"] == f"/status/{job_id}"
    assert response.json()["links"]["self"] == f"/status/{job_id}"
    followed = await client.get(response.headers["location"])
    assert followed.status_code == 200
    assert followed.json()["job_id"] == job_id


async def test_rejected_plan_fails_job(client):
    job_id = await submit(client, LIGHTHOUSE_QUESTION)
    await wait_for_status(client, job_id, {"awaiting_approval"})

    response = await client.post(f"/research/{job_id}/approve", json={"approved": False})

    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    view = await wait_for_status(client, job_id, TERMINAL)
    assert view["status"] == "failed"
    assert "rejected" in view["error"]
    assert view["sources"] == []
    assert view["report"] is None
    assert view["timings"]["research_s"] is None
    events = await replay_events(client, job_id)
    assert event_data(events, "source") == []
    assert event_data(events, "token") == []
    assert "rejected" in event_data(events, "error")[0]["error"]


async def test_edited_plan_is_what_runs(client):
    job_id = await submit(client, LIGHTHOUSE_QUESTION)
    draft = await wait_for_status(client, job_id, {"awaiting_approval"})
    assert draft["plan"] != GLACIER_PLAN
    assert draft["plan_edited"] is False

    response = await approve(client, job_id, edited_plan=GLACIER_PLAN)
    assert response.status_code == 200

    view = await wait_for_status(client, job_id, TERMINAL)
    edited_queries = {query for step in GLACIER_PLAN["steps"] for query in step["queries"]}
    assert view["status"] == "done", view
    assert view["plan_edited"] is True
    assert view["plan"] == GLACIER_PLAN
    assert view["sources"]
    assert {source["query"] for source in view["sources"]} <= edited_queries
    assert {corpus_file(source["url"]) for source in view["sources"]} == {"glaciers.md"}


async def test_planning_error_fails_job(tmp_path: Path, nim):
    state, nim_url = nim
    state.plan_reply_override = "This reply is not JSON."
    settings = nvidia_settings(tmp_path / "data", nim_url)

    async with run_scout(settings) as scout, scout.client() as client:
        job_id = await submit(client, LIGHTHOUSE_QUESTION)
        view = await wait_for_status(client, job_id, TERMINAL)

    assert view["status"] == "failed"
    assert "did not return a valid plan" in view["error"]
    assert view["plan"] is None
    assert state.planner_calls == 2
    assert state.writer_calls == 0


async def test_restart_before_approval_resumes(tmp_path: Path):
    settings = make_settings(tmp_path / "data")

    async with run_scout(settings) as first, first.client() as client:
        job_id = await submit(client, LIGHTHOUSE_QUESTION)
        before = await wait_for_status(client, job_id, {"awaiting_approval"})

    async with run_scout(settings) as second, second.client() as client:
        after = await client.get(f"/status/{job_id}")
        assert after.status_code == 200
        assert after.json()["status"] == "awaiting_approval"
        assert after.json()["plan"] == before["plan"]

        response = await approve(client, job_id)
        assert response.status_code == 200
        view = await wait_for_status(client, job_id, TERMINAL)

    assert view["status"] == "done", view
    assert view["sources"]
    assert view["report"]


async def test_list_newest_first_filtered(client):
    job_ids = []
    for question in ("sourdough starter", "fresnel lens", "glacier moraine", "varroa mites"):
        job_ids.append(await submit(client, question))
        await wait_for_status(client, job_ids[-1], {"awaiting_approval"})
    for job_id in job_ids[:2]:
        await approve(client, job_id)
        await wait_for_status(client, job_id, TERMINAL)

    everything = await client.get("/research")
    done = await client.get("/research", params={"status": "done"})
    waiting = await client.get("/research", params={"status": "awaiting_approval"})

    assert everything.status_code == 200
    assert [job["job_id"] for job in everything.json()["jobs"]] == job_ids[::-1]
    assert everything.json()["next_cursor"] is None
    assert [job["job_id"] for job in done.json()["jobs"]] == job_ids[1::-1]
    assert [job["job_id"] for job in waiting.json()["jobs"]] == job_ids[:1:-1]


async def test_list_pages_with_cursor(client):
    job_ids = [await submit(client, f"sourdough starter number {n}") for n in range(5)]

    pages, cursor = [], None
    async with asyncio.timeout(10):
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            response = await client.get("/research", params=params)
            assert response.status_code == 200
            pages.append([job["job_id"] for job in response.json()["jobs"]])
            cursor = response.json()["next_cursor"]
            if cursor is None:
                break

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [job_id for page in pages for job_id in page] == job_ids[::-1]


async def test_list_invalid_status_rejected(client):
    response = await client.get("/research", params={"status": "finished"})

    assert_problem(response, 422, "query.status")


async def test_health_makes_no_model_calls(tmp_path: Path, nim):
    state, nim_url = nim
    settings = nvidia_settings(tmp_path / "data", nim_url)

    async with run_scout(settings) as scout, scout.client() as client:
        response = await client.get("/health")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["model"] == "test/model"
    assert state.requests == []


async def test_one_slot_runs_jobs_serially(tmp_path: Path):
    # Each research run streams 60 report tokens 2 ms apart, so runs that shared the
    # slot would overlap for over 100 ms and the sampler below would see it.
    settings = make_settings(
        tmp_path / "data",
        SCOUT_MAX_CONCURRENT_JOBS="1",
        SCOUT_OFFLINE_REPORT_TOKENS="60",
        SCOUT_OFFLINE_TOKEN_DELAY_MS="2",
    )
    questions = ["sourdough starter", "fresnel lens", "glacier moraine", "varroa mites"]

    async with run_scout(settings) as scout, scout.client() as client:
        runner = scout.service.runner
        active: list[int] = []
        queued: list[int] = []

        async def sample_runs() -> None:
            while True:
                active.append(runner.active_runs)
                queued.append(runner.queued_runs)
                await asyncio.sleep(0.001)

        sampler = asyncio.create_task(sample_runs())
        try:
            job_ids = await asyncio.gather(*(submit(client, q) for q in questions))
            await asyncio.gather(
                *(wait_for_status(client, job_id, {"awaiting_approval"}) for job_id in job_ids)
            )
            responses = await asyncio.gather(*(approve(client, job_id) for job_id in job_ids))
            views = await asyncio.gather(
                *(wait_for_status(client, job_id, TERMINAL) for job_id in job_ids)
            )
        finally:
            sampler.cancel()

    assert [response.status_code for response in responses] == [200] * len(job_ids)
    assert [view["status"] for view in views] == ["done"] * len(job_ids)
    assert max(active) == 1
    assert max(queued) >= 1
