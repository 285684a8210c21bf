"""Crash recovery, leases, shutdown, cancellation and time limits, against real servers.

The crash tests run `scout serve` as a child process on loopback, kill it with SIGKILL or
stop it with SIGTERM, then let another server on the same data directory finish its jobs.
Every child process is killed by its PID when its test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from app.config import Settings
from tests.conftest import CORPUS_DIR, RunningScout, make_settings, run_scout
from tests.fakes import FakeNim, StreamSpan
from tests.fakes.nim import split_into_tokens
from tests.helpers import TERMINAL, approve, submit, wait_for_status
from tests.support import (
    NIM_API_KEY,
    NIM_MODEL,
    TAVILY_API_KEY,
    assert_problem,
    nvidia_settings,
    serve_fake_nim,
    serve_fake_tavily,
)

REPO_DIR = Path(__file__).resolve().parent.parent
SERVE_CODE = "from app.cli import main; raise SystemExit(main())"
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
# Importing LangGraph and LangChain can take several seconds on a loaded machine.
PROCESS_START_TIMEOUT_S = 60.0
PROCESS_EXIT_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 30.0
TEST_TIMEOUT_S = 90.0

LEASE_TTL_S = 1.0
SHUTDOWN_GRACE_S = 1.0
# Every test server uses a one-second lease and polls the store often, so takeovers are quick.
# The guardrails make model calls of their own, which would upset the counts of model
# requests these tests make and slow every phase down, so they are off here.
FAST_LEASES = {
    "SCOUT_LEASE_TTL_S": str(LEASE_TTL_S),
    "SCOUT_EVENT_POLL_S": "0.05",
    "SCOUT_GUARDRAILS": "off",
}
# The default pace of 40 model requests a minute would put 1.5 s before every model call.
FAST_MODEL = {"SCOUT_LLM_RPM": "6000", "SCOUT_RETRY_BASE_S": "0.01"}

# 60 sentences of 8 word-sized tokens: 480 tokens, which stream for 24 s at 50 ms each.
LONG_REPORT = "".join(f"Claim {n} is supported by a source [1]. " for n in range(1, 61))
SLOW_TOKEN_S = 0.05
TOKENS_BEFORE_CRASH = 5
# A pause that outlasts the test, so only a kill or a lowered knob ends it.
HANG_S = 60.0

QUESTIONS = {
    "planning": "How do lighthouse lenses focus a beam of light?",
    "research": "How do glaciers carve moraines as they retreat?",
    "writing": "How does sourdough starter make bread rise?",
}


# --- Events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One received event; `id` is None for `reconnect`, which carries no id."""

    id: int | None
    name: str
    data: Any


async def follow_events(
    client: httpx.AsyncClient,
    job_id: str,
    into: list[Event],
    last_event_id: int = 0,
) -> None:
    """Append a job's events to `into` until `end` or `reconnect`, or until the connection drops.

    A dropped connection is expected here: the server behind it was killed.
    """
    headers = {"Last-Event-ID": str(last_event_id)}
    url = f"/research/{job_id}/events"
    with contextlib.suppress(httpx.TransportError):
        async with aconnect_sse(client, "GET", url, headers=headers) as source:
            async for sse in source.aiter_sse():
                if not sse.event or not sse.data:
                    continue
                # httpx-sse repeats the previous id on the id-less `reconnect` event.
                event_id = None if sse.event == "reconnect" else int(sse.id)
                into.append(Event(event_id, sse.event, sse.json()))
                if sse.event in ("end", "reconnect"):
                    return


async def read_events(
    client: httpx.AsyncClient, job_id: str, last_event_id: int = 0
) -> list[Event]:
    """Read a job's stream after `last_event_id` until it ends, and return its events."""
    events: list[Event] = []
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        await follow_events(client, job_id, events, last_event_id)
    return events


def names(events: list[Event]) -> list[str]:
    return [event.name for event in events]


def tokens(events: list[Event]) -> list[dict[str, Any]]:
    return [event.data for event in events if event.name == "token"]


def report_of(events: list[Event]) -> dict[str, Any]:
    return next(event.data for event in events if event.name == "report")


def assert_whole_stream(events: list[Event], label: str) -> None:
    """Check a finished job's full stream: ids 1..N, one `report`, and `end` last."""
    ids = [event.id for event in events]
    assert ids == list(range(1, len(events) + 1)), f"{label}: event ids {ids}"
    assert names(events).count("report") == 1, f"{label}: {names(events)}"
    assert names(events).count("end") == 1, f"{label}: {names(events)}"
    assert events[-1].name == "end", f"{label}: {names(events)}"


def assert_sources_once(events: list[Event], view: dict[str, Any], label: str) -> None:
    """Check that each source of the finished job was announced exactly once."""
    announced = [event.data["id"] for event in events if event.name == "source"]
    assert announced == [source["id"] for source in view["sources"]], label


def reset_index(job_tokens: list[dict[str, Any]]) -> int | None:
    """Return the index of the only token with `"reset": true`, or None if no token has it."""
    marked = [index for index, token in enumerate(job_tokens) if token.get("reset")]
    assert len(marked) <= 1, f"tokens {marked} all carry reset"
    return marked[0] if marked else None


async def wait_until(predicate: Callable[[], bool], condition: str, limit_s: float = 20.0) -> None:
    """Poll `predicate` every 20 ms until it is true, or fail naming `condition` after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit_s} s waiting until {condition}")
        await asyncio.sleep(0.02)


# --- Child processes -----------------------------------------------------------------------


@dataclass
class ScoutProcess:
    """A `scout serve` child process, its base URL and the file its output goes to."""

    process: asyncio.subprocess.Process
    base_url: str
    log_path: Path

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=10.0)

    async def kill(self) -> int:
        """Send SIGKILL to the child's PID and return its exit status."""
        self.process.kill()
        return await asyncio.wait_for(self.process.wait(), PROCESS_EXIT_TIMEOUT_S)


def child_env(data_dir: Path, **env: str) -> dict[str, str]:
    """Build a child's environment: offline providers and fast leases unless `env` overrides.

    Provider keys and Scout settings of the test runner's own environment are left out,
    so a child never reaches a real endpoint.
    """
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SCOUT_", "NVIDIA_", "TAVILY_"))
    }
    return {
        **inherited,
        "SCOUT_DATA_DIR": str(data_dir),
        "SCOUT_CORPUS_DIR": str(CORPUS_DIR),
        "SCOUT_LLM": "offline",
        "SCOUT_SEARCH": "local",
        **FAST_LEASES,
        **env,
    }


def fake_provider_env(nim_url: str, tavily_url: str) -> dict[str, str]:
    """Return the variables that point the real NIM and Tavily clients at the fakes."""
    return {
        "SCOUT_LLM": "nvidia",
        "NVIDIA_API_KEY": NIM_API_KEY,
        "NVIDIA_BASE_URL": f"{nim_url}/v1",
        "SCOUT_MODEL": NIM_MODEL,
        "SCOUT_SEARCH": "tavily",
        "TAVILY_API_KEY": TAVILY_API_KEY,
        "TAVILY_BASE_URL": tavily_url,
        **FAST_MODEL,
    }


def fake_provider_settings(data_dir: Path, nim_url: str, tavily_url: str, **env: str) -> Settings:
    """Return in-process settings with the same providers and leases as `fake_provider_env`."""
    return nvidia_settings(
        data_dir,
        nim_url,
        SCOUT_SEARCH="tavily",
        TAVILY_API_KEY=TAVILY_API_KEY,
        TAVILY_BASE_URL=tavily_url,
        **FAST_LEASES,
        **FAST_MODEL,
        **env,
    )


@contextlib.asynccontextmanager
async def scout_process(data_dir: Path, log_path: Path, **env: str) -> AsyncIterator[ScoutProcess]:
    """Start `scout serve` on 127.0.0.1 with an OS-chosen port and wait until /health returns 200.

    On exit the child is killed by its PID unless it has already exited.
    """
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVE_CODE,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            cwd=REPO_DIR,
            env=child_env(data_dir, **env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        base_url = await _wait_until_serving(process, log_path)
        yield ScoutProcess(process, base_url, log_path)
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), PROCESS_EXIT_TIMEOUT_S)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace")


async def _wait_until_serving(process: asyncio.subprocess.Process, log_path: Path) -> str:
    base_url = None
    try:
        async with asyncio.timeout(PROCESS_START_TIMEOUT_S), httpx.AsyncClient() as client:
            while True:
                if process.returncode is not None:
                    break
                if base_url is None:
                    found = LISTENING.search(read_log(log_path))
                    base_url = f"http://127.0.0.1:{found.group(1)}" if found else None
                if base_url is not None:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"{base_url}/health")).status_code == 200:
                            return base_url
                await asyncio.sleep(0.05)
    except TimeoutError:
        pass
    output = read_log(log_path)[-3000:]
    raise RuntimeError(
        f"scout serve did not start within {PROCESS_START_TIMEOUT_S} s"
        f" (exit status {process.returncode}); its output:\n{output}"
    )


# --- Crash and restart ---------------------------------------------------------------------


async def job_in_phase(
    client: httpx.AsyncClient, question: str, reached: Callable[[], bool], condition: str
) -> str:
    """Submit `question`, approve its plan and wait until `reached()` returns True."""
    job_id = await submit(client, question)
    await wait_for_status(client, job_id, {"awaiting_approval"})
    response = await approve(client, job_id)
    assert response.status_code == 200, response.text
    await wait_until(reached, condition)
    return job_id


def writer_spans(nim: FakeNim, question: str) -> list[StreamSpan]:
    return [span for span in nim.streams if question in span.request.text]


def planner_requests(nim: FakeNim, question: str) -> int:
    return sum(1 for r in nim.requests if r.role == "planner" and question in r.text)


@pytest.mark.slow
async def test_kill_in_each_phase_recovers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        serve_fake_nim() as (nim, nim_url),
        serve_fake_tavily() as (tavily, tavily_url),
    ):
        nim.report_tokens = split_into_tokens(LONG_REPORT)
        nim.token_delay_s = SLOW_TOKEN_S
        env = fake_provider_env(nim_url, tavily_url)

        async with (
            scout_process(data_dir, tmp_path / "first.log", **env) as first,
            first.client() as client,
        ):
            # Writing: the report streams slowly, so wait until some tokens are stored.
            seen: list[Event] = []
            job_ids = {}
            job_ids["writing"] = await job_in_phase(
                client,
                QUESTIONS["writing"],
                lambda: bool(writer_spans(nim, QUESTIONS["writing"])),
                "the writer stream started",
            )
            watcher = asyncio.create_task(follow_events(client, job_ids["writing"], seen))
            await wait_until(lambda: len(tokens(seen)) >= TOKENS_BEFORE_CRASH, "tokens were stored")

            # Research: every search hangs from now on.
            tavily.delay_s = HANG_S
            searches = len(tavily.requests)
            job_ids["research"] = await job_in_phase(
                client,
                QUESTIONS["research"],
                lambda: len(tavily.requests) > searches,
                "a search was sent",
            )

            # Planning: the planner hangs from now on.
            nim.plan_delay_s = HANG_S
            job_ids["planning"] = await submit(client, QUESTIONS["planning"])
            await wait_until(
                lambda: planner_requests(nim, QUESTIONS["planning"]) == 1, "planning started"
            )

            health = (await client.get("/health")).json()
            statuses = {
                phase: (await client.get(f"/status/{job_id}")).json()["status"]
                for phase, job_id in job_ids.items()
            }
            exit_status = await first.kill()
            await asyncio.wait_for(watcher, STREAM_TIMEOUT_S)

        tokens_before_crash = len(tokens(seen))
        nim.plan_delay_s = tavily.delay_s = nim.token_delay_s = 0.0
        settings = fake_provider_settings(data_dir, nim_url, tavily_url)
        async with run_scout(settings) as second, second.client() as client:
            await wait_for_status(client, job_ids["planning"], {"awaiting_approval"})
            response = await approve(client, job_ids["planning"])
            assert response.status_code == 200, response.text
            views = {
                phase: await wait_for_status(client, job_id, TERMINAL, timeout=JOB_TIMEOUT_S)
                for phase, job_id in job_ids.items()
            }
            streams = {
                phase: await read_events(client, job_id) for phase, job_id in job_ids.items()
            }

    assert exit_status == -signal.SIGKILL
    assert health["active_runs"] == 3, health
    assert statuses == {"writing": "running", "research": "running", "planning": "pending"}
    assert tokens_before_crash >= TOKENS_BEFORE_CRASH
    for phase, view in views.items():
        assert view["status"] == "done", (phase, view)
        assert_whole_stream(streams[phase], phase)
        assert_sources_once(streams[phase], view, phase)
        assert report_of(streams[phase])["report"] == view["report"], phase
    assert planner_requests(nim, QUESTIONS["planning"]) == 2

    for phase in ("research", "planning"):
        assert reset_index(tokens(streams[phase])) is None, phase
        assert "".join(t["text"] for t in tokens(streams[phase])) == views[phase]["report"]

    written = tokens(streams["writing"])
    restart = reset_index(written)
    assert restart is not None
    assert restart >= tokens_before_crash
    assert [t["text"] for t in written[:restart]] == nim.report_tokens[:restart]
    assert "".join(t["text"] for t in written[restart:]) == views["writing"]["report"]
    assert views["writing"]["report"] == nim.report_text


@pytest.mark.slow
async def test_peer_takes_over_killed_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    questions = list(QUESTIONS.values())
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        serve_fake_nim() as (nim, nim_url),
        serve_fake_tavily() as (_, tavily_url),
    ):
        nim.report_tokens = split_into_tokens(LONG_REPORT)
        nim.token_delay_s = SLOW_TOKEN_S
        env = fake_provider_env(nim_url, tavily_url)

        async with (
            scout_process(data_dir, tmp_path / "a.log", **env) as process_a,
            process_a.client() as client_a,
        ):
            job_ids = [
                await job_in_phase(
                    client_a,
                    question,
                    lambda q=question: bool(writer_spans(nim, q)),
                    f"the writer of {question!r} started",
                )
                for question in questions
            ]
            health_a = (await client_a.get("/health")).json()

            # B starts while A writes, and keeps running its lease loop past A's lease time.
            async with (
                scout_process(data_dir, tmp_path / "b.log", **env) as process_b,
                process_b.client() as client_b,
            ):
                await asyncio.sleep(LEASE_TTL_S * 2)
                health_b_before = (await client_b.get("/health")).json()
                spans_before = {q: len(writer_spans(nim, q)) for q in questions}
                unfinished = [s for s in nim.streams if s.ended_at is None]

                exit_status = await process_a.kill()
                killed_at = time.monotonic()
                nim.token_delay_s = 0.0
                views = [
                    await wait_for_status(client_b, job_id, TERMINAL, timeout=JOB_TIMEOUT_S)
                    for job_id in job_ids
                ]
                streams = [await read_events(client_b, job_id) for job_id in job_ids]
                b_alive = process_b.process.returncode is None

    assert health_a["active_runs"] == 3, health_a
    assert health_b_before["active_runs"] == 0, health_b_before
    assert spans_before == dict.fromkeys(questions, 1)
    assert len(unfinished) == 3
    assert exit_status == -signal.SIGKILL
    assert b_alive
    for question, job_id, view, stream in zip(questions, job_ids, views, streams, strict=True):
        spans = writer_spans(nim, question)
        assert view["status"] == "done", (job_id, view)
        assert planner_requests(nim, question) == 1, question
        # One writer request per attempt, and the second starts after the first has ended.
        assert len(spans) == 2, question
        on_a, on_b = spans
        assert on_a.ended_at is not None, question
        assert on_a.ended_at <= on_b.started_at, question
        assert on_b.started_at > killed_at, question
        assert on_b.finished, question
        assert_whole_stream(stream, job_id)
        texts = [t["text"] for t in tokens(stream)]
        restart = reset_index(tokens(stream))
        assert restart is not None, job_id
        assert restart > 0, job_id
        assert texts[:restart] == nim.report_tokens[:restart], job_id
        assert "".join(texts[restart:]) == view["report"], job_id


# --- Shutdown ------------------------------------------------------------------------------

OFFLINE_QUESTIONS = (
    "How does a lighthouse Fresnel lens focus its beam?",
    "How do glacier crevasses and moraines form?",
)
# 600 tokens at 20 ms each stream for 12 s, far longer than the shutdown grace time.
OFFLINE_TOKENS = 600
SLOW_OFFLINE = {
    "SCOUT_OFFLINE_TOKEN_DELAY_MS": "20",
    "SCOUT_OFFLINE_REPORT_TOKENS": str(OFFLINE_TOKENS),
}


@pytest.mark.slow
async def test_sigterm_drains_then_restart_finishes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**SLOW_OFFLINE, "SCOUT_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S)}
    async with asyncio.timeout(TEST_TIMEOUT_S):
        async with (
            scout_process(data_dir, tmp_path / "first.log", **env) as first,
            first.client() as client,
        ):
            job_ids = []
            seen: list[list[Event]] = []
            for question in OFFLINE_QUESTIONS:
                job_id = await submit(client, question)
                await wait_for_status(client, job_id, {"awaiting_approval"})
                response = await approve(client, job_id)
                assert response.status_code == 200, response.text
                job_ids.append(job_id)
                seen.append([])
            watchers = [
                asyncio.create_task(follow_events(client, job_id, events))
                for job_id, events in zip(job_ids, seen, strict=True)
            ]
            await wait_until(
                lambda: all(len(tokens(events)) >= TOKENS_BEFORE_CRASH for events in seen),
                "both jobs stored tokens",
            )

            first.process.send_signal(signal.SIGTERM)
            stopping = time.monotonic()
            exit_status = await asyncio.wait_for(
                first.process.wait(), SHUTDOWN_GRACE_S + PROCESS_EXIT_TIMEOUT_S
            )
            stop_s = time.monotonic() - stopping
            await asyncio.wait_for(asyncio.gather(*watchers), STREAM_TIMEOUT_S)

        settings = make_settings(
            data_dir, **FAST_LEASES, SCOUT_OFFLINE_REPORT_TOKENS=str(OFFLINE_TOKENS)
        )
        async with run_scout(settings) as second, second.client() as client:
            views = [
                await wait_for_status(client, job_id, TERMINAL, timeout=JOB_TIMEOUT_S)
                for job_id in job_ids
            ]
            streams = [await read_events(client, job_id) for job_id in job_ids]
            resumed = [
                await read_events(client, job_id, events[-1].data["last_event_id"])
                for job_id, events in zip(job_ids, seen, strict=True)
            ]

    assert stop_s < SHUTDOWN_GRACE_S + 5, stop_s
    for job_id, events, view, stream, rest in zip(
        job_ids, seen, views, streams, resumed, strict=True
    ):
        assert events[-1].name == "reconnect", names(events)[-3:]
        assert events[-1].data["last_event_id"] == events[-2].id
        assert view["status"] == "done", (job_id, view)
        assert_whole_stream(stream, job_id)
        assert rest == stream[events[-2].id :], job_id
        texts = [t["text"] for t in tokens(stream)]
        restart = reset_index(tokens(stream))
        assert restart is not None, job_id
        assert restart >= len(tokens(events)), job_id
        # The offline writer is deterministic, so the first attempt wrote a prefix of the second.
        assert texts[:restart] == texts[restart:][:restart], job_id
        assert "".join(texts[restart:]) == view["report"], job_id

    assert exit_status == 0


# --- Cancellation --------------------------------------------------------------------------


def offline_settings(tmp_path: Path, **env: str) -> Settings:
    return make_settings(tmp_path / "data", **FAST_LEASES, **env)


async def stored_events(scout: RunningScout, job_id: str) -> list[Event]:
    """Return every event stored for the job, read from the server's storage directly."""
    stored = await scout.service.storage.read_events(job_id, 0, 100_000)
    return [Event(event.id, event.event, event.json()) for event in stored]


def assert_cancelled(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "failed"
    assert response.json()["error"] == "cancelled"


def assert_failed_stream(events: list[Event]) -> None:
    """Check a failed job's full stream: ids 1..N, no report, then `error`, `status` and `end`."""
    ids = [event.id for event in events]
    assert ids == list(range(1, len(events) + 1)), ids
    assert "report" not in names(events)
    assert names(events).count("end") == 1
    assert names(events)[-3:] == ["error", "status", "end"]
    assert events[-1].data == {"status": "failed"}


async def test_cancel_pending_job(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S), serve_fake_nim() as (nim, nim_url):
        nim.plan_delay_s = HANG_S
        settings = nvidia_settings(tmp_path / "data", nim_url, **FAST_LEASES, **FAST_MODEL)
        async with run_scout(settings) as scout, scout.client() as client:
            job_id = await submit(client, OFFLINE_QUESTIONS[0])
            await wait_until(lambda: len(nim.requests) == 1, "planning started")

            response = await client.post(f"/research/{job_id}/cancel")
            stream = await read_events(client, job_id)
            # The fake now replies to the abandoned planner request, and the job must stay
            # cancelled.
            nim.plan_delay_s = 0.0
            await asyncio.sleep(0.3)
            view = (await client.get(f"/status/{job_id}")).json()
            active_runs = scout.service.runner.active_runs

    assert_cancelled(response)
    assert names(stream)[-3:] == ["error", "status", "end"]
    assert stream[-1].data == {"status": "failed"}
    assert view["status"] == "failed"
    assert view["error"] == "cancelled"
    assert view["plan"] is None
    assert active_runs == 0


async def test_cancel_awaiting_approval_job(tmp_path: Path) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        run_scout(offline_settings(tmp_path)) as scout,
        scout.client() as client,
    ):
        job_id = await submit(client, OFFLINE_QUESTIONS[0])
        await wait_for_status(client, job_id, {"awaiting_approval"})

        response = await client.post(f"/research/{job_id}/cancel")
        stream = await read_events(client, job_id)
        approval = await approve(client, job_id)

    assert_cancelled(response)
    assert_failed_stream(stream)
    assert approval.status_code == 409, approval.text


async def test_cancel_running_job_stops_it(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, **SLOW_OFFLINE)
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        run_scout(settings) as scout,
        scout.client() as client,
    ):
        job_id = await submit(client, OFFLINE_QUESTIONS[0])
        await wait_for_status(client, job_id, {"awaiting_approval"})
        seen: list[Event] = []
        watcher = asyncio.create_task(follow_events(client, job_id, seen))
        approval = await approve(client, job_id)
        assert approval.status_code == 200, approval.text
        await wait_until(lambda: len(tokens(seen)) >= TOKENS_BEFORE_CRASH, "tokens were stored")

        response = await client.post(f"/research/{job_id}/cancel")
        await asyncio.wait_for(watcher, STREAM_TIMEOUT_S)
        # Long enough for several more tokens, had the writer kept going.
        await asyncio.sleep(0.5)
        stored = await stored_events(scout, job_id)
        active_runs = scout.service.runner.active_runs
        view = (await client.get(f"/status/{job_id}")).json()

    assert_cancelled(response)
    assert_failed_stream(seen)
    assert stored == seen
    assert len(tokens(stored)) < OFFLINE_TOKENS
    assert active_runs == 0
    assert view["status"] == "failed"


async def test_cancel_finished_or_unknown_job(tmp_path: Path) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        run_scout(offline_settings(tmp_path)) as scout,
        scout.client() as client,
    ):
        job_id = await submit(client, OFFLINE_QUESTIONS[0])
        await wait_for_status(client, job_id, {"awaiting_approval"})
        await approve(client, job_id)
        await wait_for_status(client, job_id, TERMINAL)

        finished = await client.post(f"/research/{job_id}/cancel")
        unknown = await client.post("/research/00000000-0000-4000-8000-000000000000/cancel")
        view = (await client.get(f"/status/{job_id}")).json()

    assert_problem(finished, 409)
    assert_problem(unknown, 404)
    assert view["status"] == "done"
    assert view["error"] is None


# --- Time limits ---------------------------------------------------------------------------


async def test_job_timeout_ends_partial(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, **SLOW_OFFLINE, SCOUT_JOB_TIMEOUT_S="2")
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        run_scout(settings) as scout,
        scout.client() as client,
    ):
        job_id = await submit(client, OFFLINE_QUESTIONS[0])
        await wait_for_status(client, job_id, {"awaiting_approval"})
        await approve(client, job_id)
        view = await wait_for_status(client, job_id, TERMINAL, timeout=JOB_TIMEOUT_S)
        stream = await read_events(client, job_id)

    assert view["status"] == "partial", view
    assert "did not finish within 2 s" in view["error"]
    assert view["sources"]
    assert view["report"]
    assert view["report"] == "".join(t["text"] for t in tokens(stream))
    assert_whole_stream(stream, job_id)
    assert report_of(stream)["partial"] is True
    assert report_of(stream)["report"] == view["report"]
    assert names(stream)[-3:] == ["error", "status", "end"]
    assert len(tokens(stream)) < OFFLINE_TOKENS


CALL_TIMEOUT = {"SCOUT_CALL_TIMEOUT_S": "0.3", "SCOUT_LLM_MAX_TRIES": "3"}


async def finish_with_fake_nim(
    tmp_path: Path, configure: Callable[[FakeNim], None]
) -> tuple[FakeNim, dict[str, Any], list[Event]]:
    """Run one job on the fake NIM set up by `configure`, approving its plan if one is drafted."""
    async with serve_fake_nim() as (nim, nim_url):
        configure(nim)
        settings = nvidia_settings(
            tmp_path / "data", nim_url, **FAST_LEASES, **FAST_MODEL, **CALL_TIMEOUT
        )
        async with run_scout(settings) as scout, scout.client() as client:
            job_id = await submit(client, OFFLINE_QUESTIONS[0])
            view = await wait_for_status(client, job_id, {"awaiting_approval", *TERMINAL})
            if view["status"] == "awaiting_approval":
                await approve(client, job_id)
                view = await wait_for_status(client, job_id, TERMINAL, timeout=JOB_TIMEOUT_S)
            stream = await read_events(client, job_id)
            # End a planner pause still under way, so the fake stops without waiting for it.
            nim.plan_delay_s = 0.0
    return nim, view, stream


def writer_requests(nim: FakeNim) -> int:
    return sum(1 for request in nim.requests if request.role == "writer")


async def test_hung_writer_retried_then_partial(tmp_path: Path) -> None:
    def hang_before_first_token(nim: FakeNim) -> None:
        nim.token_delay_s = HANG_S

    async with asyncio.timeout(TEST_TIMEOUT_S):
        nim, view, stream = await finish_with_fake_nim(tmp_path, hang_before_first_token)

    assert view["status"] == "partial", view
    assert "call timed out" in view["error"]
    assert "SCOUT_CALL_TIMEOUT_S" in view["error"]
    assert view["sources"]
    assert view["report"] == ""
    assert writer_requests(nim) == 3
    assert_whole_stream(stream, view["job_id"])


async def test_writer_stalled_mid_stream_keeps_text(tmp_path: Path) -> None:
    def stall_after_three_tokens(nim: FakeNim) -> None:
        nim.stall_after_tokens = 3

    async with asyncio.timeout(TEST_TIMEOUT_S):
        nim, view, stream = await finish_with_fake_nim(tmp_path, stall_after_three_tokens)

    assert view["status"] == "partial", view
    assert "call timed out" in view["error"]
    assert view["report"] == "".join(nim.report_tokens[:3])
    assert [t["text"] for t in tokens(stream)] == nim.report_tokens[:3]
    # Text already streamed cannot be taken back, so a stall after it is not retried.
    assert writer_requests(nim) == 1
    assert_whole_stream(stream, view["job_id"])


async def test_hung_planner_retried_then_failed(tmp_path: Path) -> None:
    def hang_planner(nim: FakeNim) -> None:
        nim.plan_delay_s = HANG_S

    async with asyncio.timeout(TEST_TIMEOUT_S):
        nim, view, stream = await finish_with_fake_nim(tmp_path, hang_planner)

    assert view["status"] == "failed", view
    assert view["plan"] is None
    assert "call timed out" in view["error"]
    assert sum(1 for request in nim.requests if request.role == "planner") == 3
    assert names(stream)[-3:] == ["error", "status", "end"]
