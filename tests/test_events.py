"""GET /research/{job_id}/events on a real loopback server: order, resume, fan-out, limits."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from tests.conftest import RunningScout, make_settings, run_scout
from tests.helpers import TERMINAL, approve, submit, wait_for_status

QUESTION = "How does Scout recover a job after a restart?"
STREAM_TIMEOUT_S = 20.0
SETTLE_MAX_WAIT_S = 2.0
SETTLE_POLL_S = 0.02

# A report of 300 tokens at about 3 ms each streams for about a second, long enough to
# disconnect and reconnect while the job is still running.
LIVE_ENV = {"SCOUT_OFFLINE_TOKEN_DELAY_MS": "3", "SCOUT_OFFLINE_REPORT_TOKENS": "300"}
LIVE_TOKENS = 300

STATUS_RANK = {
    "pending": 0,
    "awaiting_approval": 1,
    "running": 2,
    "done": 3,
    "partial": 3,
    "failed": 3,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One received event. Its `id` is None for `reconnect`, which carries no id."""

    id: int | None
    name: str
    data: Any


@dataclass(slots=True)
class Stream:
    """What one connection to the events endpoint received."""

    status_code: int
    headers: httpx.Headers
    retry_ms: int | None = None
    events: list[Event] = field(default_factory=list)


EventCallback = Callable[[Event], Awaitable[None]]


def events_url(job_id: str) -> str:
    return f"/research/{job_id}/events"


def to_event(sse: ServerSentEvent) -> Event:
    # httpx-sse keeps the last seen id on later events, as the SSE specification requires,
    # so the id-less `reconnect` event would otherwise repeat the id before it.
    event_id = None if sse.event == "reconnect" else int(sse.id)
    return Event(event_id, sse.event, sse.json())


async def read_stream(
    client: httpx.AsyncClient,
    job_id: str,
    *,
    last_event_id: str | None = None,
    params: dict[str, str] | None = None,
    stop: Callable[[Event], bool] | None = None,
    on_event: EventCallback | None = None,
) -> Stream:
    """Read events until the server ends the stream, or until `stop` returns True, then close."""
    headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
    async with (
        asyncio.timeout(STREAM_TIMEOUT_S),
        aconnect_sse(client, "GET", events_url(job_id), headers=headers, params=params) as source,
    ):
        stream = Stream(source.response.status_code, source.response.headers)
        async with contextlib.aclosing(source.aiter_sse()) as messages:
            async for sse in messages:
                if sse.retry is not None and not sse.data:
                    stream.retry_ms = sse.retry
                    continue
                event = to_event(sse)
                stream.events.append(event)
                if on_event is not None:
                    await on_event(event)
                if stop is not None and stop(event):
                    break
    return stream


def signal_first_event(ready: asyncio.Event) -> EventCallback:
    """Build a callback that sets `ready` at the first event, sent only after subscribing."""

    async def callback(event: Event) -> None:
        ready.set()

    return callback


def nth_event(name: str, n: int) -> Callable[[Event], bool]:
    """Build a stop predicate that is True at the `n`-th event called `name`."""
    seen = itertools.count(1)
    return lambda event: event.name == name and next(seen) == n


def is_status(status: str) -> Callable[[Event], bool]:
    return lambda event: event.name == "status" and event.data["status"] == status


def event_ids(events: list[Event]) -> list[int | None]:
    return [event.id for event in events]


async def planned_job(client: httpx.AsyncClient) -> str:
    """Submit the question and wait until its plan awaits approval."""
    job_id = await submit(client, QUESTION)
    await wait_for_status(client, job_id, {"awaiting_approval"})
    return job_id


async def wait_subscribed(ready: list[asyncio.Event]) -> None:
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        await asyncio.gather(*(flag.wait() for flag in ready))


async def settle(predicate: Callable[[], bool], max_wait_s: float = SETTLE_MAX_WAIT_S) -> None:
    """Poll `predicate` until it is true or `max_wait_s` passes. The caller asserts afterwards."""
    for _ in range(round(max_wait_s / SETTLE_POLL_S)):
        if predicate():
            return
        await asyncio.sleep(SETTLE_POLL_S)


@contextlib.asynccontextmanager
async def live_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Run a server whose offline report streams slowly enough to interrupt, and yield a client."""
    settings = make_settings(tmp_path / "data", **LIVE_ENV)
    async with run_scout(settings) as scout, scout.client() as client:
        yield client


async def subscribe_and_run(client: httpx.AsyncClient, job_id: str, count: int = 1) -> list[Stream]:
    """Open `count` streams on a planned job, approve it once all are subscribed, read all."""
    ready = [asyncio.Event() for _ in range(count)]
    readers = [
        asyncio.create_task(read_stream(client, job_id, on_event=signal_first_event(flag)))
        for flag in ready
    ]
    await wait_subscribed(ready)
    response = await approve(client, job_id)
    assert response.status_code == 200, response.text
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        return await asyncio.gather(*readers)


# --- Raw HTTP/1.1 on a socket, for a client that stops reading ----------------------------


async def open_stalled_stream(port: int, job_id: str) -> socket.socket:
    """Send the GET request on a socket with a small receive buffer, then read nothing."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = (
        f"GET {events_url(job_id)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    return sock


def shrink_server_send_buffer(scout: RunningScout, client_sock: socket.socket) -> None:
    """Limit what the server buffers for the connection of `client_sock` to a few kilobytes.

    Linux lets a loopback socket buffer megabytes, more than all events of a 3000-token
    job, so without this the server's sends to a client that reads nothing never block.
    """
    client_port = client_sock.getsockname()[1]
    for connection in scout.server.server_state.connections:
        transport = connection.transport
        if transport.get_extra_info("peername")[1] == client_port:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            transport.set_write_buffer_limits(high=4096)
            return
    raise AssertionError(f"the server has no connection from port {client_port}")


async def read_until_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    chunks = []
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        while data := await loop.sock_recv(sock, 65536):
            chunks.append(data)
    return b"".join(chunks)


def decode_chunked(raw: bytes) -> bytes:
    """Return the body of a raw HTTP/1.1 response sent with chunked transfer encoding."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = bytearray()
    position = 0
    while True:
        line_end = rest.index(b"\r\n", position)
        size = int(rest[position:line_end], 16)
        if size == 0:
            return bytes(body)
        start = line_end + 2
        body += rest[start : start + size]
        position = start + size + 2


def parse_frames(body: bytes) -> list[dict[str, str]]:
    """Split an SSE body into each event's fields, dropping comments and `retry`-only blocks."""
    text = body.decode().replace("\r\n", "\n")
    frames = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "event" in fields:
            frames.append(fields)
    return frames


# --- Tests -------------------------------------------------------------------------------


async def test_stream_full_job_sequence(tmp_path):
    async with live_client(tmp_path) as client:
        job_id = await submit(client, QUESTION)
        ready = asyncio.Event()
        reader = asyncio.create_task(
            read_stream(client, job_id, on_event=signal_first_event(ready))
        )
        await wait_subscribed([ready])
        await wait_for_status(client, job_id, {"awaiting_approval"})
        response = await approve(client, job_id)
        assert response.status_code == 200, response.text
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            stream = await reader
        view = (await client.get(f"/status/{job_id}")).json()

    events = stream.events
    names = [event.name for event in events]
    sources = [event for event in events if event.name == "source"]
    tokens = [event for event in events if event.name == "token"]
    statuses = [event.data["status"] for event in events if event.name == "status"]
    report = next(event.data for event in events if event.name == "report")

    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.retry_ms is not None
    assert stream.retry_ms > 0
    assert event_ids(events) == list(range(1, len(events) + 1))
    assert statuses == ["pending", "awaiting_approval", "running", "done"]
    assert sources
    assert len(tokens) == LIVE_TOKENS
    expected = (
        ["status", "plan", "status", "status"]
        + ["source"] * len(sources)
        + ["token"] * len(tokens)
        + ["report", "status", "end"]
    )
    assert names == expected
    assert events[-1].data == {"status": "done"}
    assert "".join(event.data["text"] for event in tokens) == report["report"]
    assert [event.data for event in sources] == report["sources"]
    assert view["status"] == "done"
    assert view["report"] == report["report"]


@dataclass(slots=True)
class InterruptedRead:
    """A subscriber that disconnected once and resumed from `resumed_after`."""

    before: Stream
    after: Stream
    resumed_after: int
    status_at_disconnect: str


async def read_with_disconnect(
    client: httpx.AsyncClient,
    job_id: str,
    stop: Callable[[Event], bool],
    ready: asyncio.Event,
    *,
    resume_from_zero: bool = False,
    via_query: bool = False,
) -> InterruptedRead:
    """Read until `stop`, disconnect, then resume with the last id (or 0) until the stream ends."""
    before = await read_stream(client, job_id, stop=stop, on_event=signal_first_event(ready))
    status = (await client.get(f"/status/{job_id}")).json()["status"]
    last_id = 0 if resume_from_zero else before.events[-1].id
    assert last_id is not None
    if via_query:
        after = await read_stream(client, job_id, params={"last_event_id": str(last_id)})
    else:
        after = await read_stream(client, job_id, last_event_id=str(last_id))
    return InterruptedRead(before, after, last_id, status)


async def test_resume_replays_missed_events(tmp_path):
    async with live_client(tmp_path) as client:
        job_id = await planned_job(client)
        cases = {
            "after_plan": {"stop": lambda event: event.name == "plan"},
            "mid_tokens": {"stop": nth_event("token", 100)},
            "mid_tokens_query": {"stop": nth_event("token", 150), "via_query": True},
            "before_end": {"stop": is_status("done")},
            "from_zero": {"stop": nth_event("token", 50), "resume_from_zero": True},
        }
        ready = {name: asyncio.Event() for name in cases}
        readers = {
            name: asyncio.create_task(
                read_with_disconnect(client, job_id, ready=ready[name], **case)
            )
            for name, case in cases.items()
        }
        full_reader = asyncio.create_task(read_stream(client, job_id))
        await wait_subscribed(list(ready.values()))
        response = await approve(client, job_id)
        assert response.status_code == 200, response.text
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            full = await full_reader
            results = {name: await task for name, task in readers.items()}

    assert full.events[-1].name == "end"
    assert event_ids(full.events) == list(range(1, len(full.events) + 1))
    for name, result in results.items():
        before_resume = [e for e in result.before.events if e.id <= result.resumed_after]
        assert before_resume + result.after.events == full.events, name
        assert result.after.events[-1].name == "end", name

    assert results["after_plan"].resumed_after == 2
    assert results["from_zero"].resumed_after == 0
    assert results["from_zero"].after.events == full.events
    # A resume in the middle of the report must catch up from the store and then go live.
    assert results["mid_tokens"].status_at_disconnect == "running"
    assert results["mid_tokens_query"].status_at_disconnect == "running"
    assert results["before_end"].after.events[0].name == "end"


async def test_stream_finished_job_replays_history(tmp_path):
    async with live_client(tmp_path) as client:
        job_id = await planned_job(client)
        (live,) = await subscribe_and_run(client, job_id)
        await wait_for_status(client, job_id, TERMINAL)
        replay = await read_stream(client, job_id)

    assert replay.status_code == 200
    assert replay.events == live.events
    assert replay.events[-1].name == "end"
    assert event_ids(replay.events) == list(range(1, len(replay.events) + 1))


async def test_stream_resumed_after_end_closes(tmp_path):
    async with live_client(tmp_path) as client:
        job_id = await planned_job(client)
        (live,) = await subscribe_and_run(client, job_id)
        await wait_for_status(client, job_id, TERMINAL)
        last_id = str(live.events[-1].id)
        async with asyncio.timeout(5):
            at_end = await read_stream(client, job_id, last_event_id=last_id)
            beyond = await read_stream(client, job_id, last_event_id="99999")
            before_end = await read_stream(client, job_id, last_event_id=str(int(last_id) - 1))

    assert at_end.events == []
    assert beyond.events == []
    assert [event.name for event in before_end.events] == ["end"]


async def test_stream_fifty_subscribers_identical(tmp_path):
    async with live_client(tmp_path) as client:
        job_id = await planned_job(client)
        streams = await subscribe_and_run(client, job_id, count=50)

    reference = streams[0].events
    assert reference[-1].name == "end"
    assert event_ids(reference) == list(range(1, len(reference) + 1))
    assert sum(event.name == "token" for event in reference) == LIVE_TOKENS
    differing = [index for index, stream in enumerate(streams) if stream.events != reference]
    assert differing == []


async def test_stream_connect_cycles_leak_nothing(tmp_path):
    settings = make_settings(tmp_path / "data", SCOUT_EVENT_POLL_S="0.05")
    limits = httpx.Limits(max_connections=50)
    async with run_scout(settings) as scout, scout.client(limits=limits) as client:
        hub = scout.service.hub
        job_id = await planned_job(client)

        # One stream first, so anything created once per process exists in the baseline.
        await read_stream(client, job_id, stop=lambda event: True)
        await settle(lambda: hub.subscriber_count == 0)
        await asyncio.sleep(0.2)
        baseline_channels = hub.channel_count
        baseline_tasks = len(asyncio.all_tasks())

        async def cycle(index: int) -> None:
            expected_count = index % 3  # read no event, one or two
            async with (
                asyncio.timeout(STREAM_TIMEOUT_S),
                aconnect_sse(client, "GET", events_url(job_id)) as source,
            ):
                if expected_count == 0:
                    return
                async with contextlib.aclosing(source.aiter_sse()) as messages:
                    read = 0
                    async for sse in messages:
                        if sse.retry is not None:
                            continue  # the `retry` hint is not an event
                        read += 1
                        if read == expected_count:
                            return

        for first in range(0, 200, 20):
            await asyncio.gather(*(cycle(index) for index in range(first, first + 20)))

        await settle(
            lambda: (
                hub.subscriber_count == 0
                and hub.channel_count == baseline_channels
                and len(asyncio.all_tasks()) <= baseline_tasks
            )
        )
        subscribers = hub.subscriber_count
        channels = hub.channel_count
        tasks = len(asyncio.all_tasks())

    assert subscribers == 0
    assert channels == baseline_channels
    assert tasks <= baseline_tasks, [task.get_name() for task in asyncio.all_tasks()]


async def test_stalled_subscriber_does_not_delay_job(tmp_path):
    settings = make_settings(
        tmp_path / "data", SCOUT_OFFLINE_REPORT_TOKENS="3000", SCOUT_SSE_WINDOW="64"
    )
    async with run_scout(settings) as scout, scout.client() as client:
        port = httpx.URL(scout.base_url).port
        assert port is not None

        unobserved_job = await planned_job(client)
        await approve(client, unobserved_job)
        unobserved = await wait_for_status(client, unobserved_job, TERMINAL)

        job_id = await planned_job(client)
        sock = await open_stalled_stream(port, job_id)
        try:
            await settle(lambda: scout.service.hub.subscriber_count == 1)
            assert scout.service.hub.subscriber_count == 1
            shrink_server_send_buffer(scout, sock)
            await approve(client, job_id)
            observed = await wait_for_status(client, job_id, TERMINAL, timeout=30)
            raw = await read_until_eof(sock)
        finally:
            sock.close()

        frames = parse_frames(decode_chunked(raw))
        received = [
            Event(int(frame["id"]), frame["event"], json.loads(frame["data"]))
            for frame in frames[:-1]
        ]
        last_id = received[-1].id
        assert last_id is not None
        rest = await read_stream(client, job_id, last_event_id=str(last_id))
        full = await read_stream(client, job_id)

    unobserved_s = unobserved["timings"]["research_s"]
    observed_s = observed["timings"]["research_s"]
    reconnect = frames[-1]
    assert unobserved["status"] == "done"
    assert observed["status"] == "done"
    assert observed_s < 2 * unobserved_s + 1, (observed_s, unobserved_s)
    assert reconnect["event"] == "reconnect"
    assert "id" not in reconnect
    assert json.loads(reconnect["data"])["last_event_id"] == last_id
    assert event_ids(received) == list(range(1, len(received) + 1))
    assert received + rest.events == full.events
    assert rest.events[-1].name == "end"


async def test_small_window_fast_subscribers_complete(tmp_path):
    # One token flush of this job can contain more events than the window.
    settings = make_settings(
        tmp_path / "data", SCOUT_OFFLINE_REPORT_TOKENS="3000", SCOUT_SSE_WINDOW="64"
    )
    async with run_scout(settings) as scout, scout.client() as client:
        job_id = await planned_job(client)
        streams = await subscribe_and_run(client, job_id, count=3)

    for stream in streams:
        assert stream.events[-1].name == "end"
        assert event_ids(stream.events) == list(range(1, len(stream.events) + 1))
        assert sum(event.name == "token" for event in stream.events) == 3000


async def test_shutdown_ends_open_streams(tmp_path):
    settings = make_settings(tmp_path / "data", SCOUT_EVENT_POLL_S="0.05")
    async with run_scout(settings) as scout, scout.client() as client:
        job_id = await planned_job(client)
        caught_up = [asyncio.Event() for _ in range(5)]

        def mark_caught_up(flag: asyncio.Event) -> EventCallback:
            async def callback(event: Event) -> None:
                if is_status("awaiting_approval")(event):
                    flag.set()

            return callback

        readers = [
            asyncio.create_task(read_stream(client, job_id, on_event=mark_caught_up(flag)))
            for flag in caught_up
        ]
        await wait_subscribed(caught_up)

        started = time.monotonic()
        scout.server.should_exit = True
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            streams = await asyncio.gather(*readers)
        elapsed = time.monotonic() - started

    assert elapsed < 3.0
    for stream in streams:
        final = stream.events[-1]
        assert final.name == "reconnect"
        assert final.data["last_event_id"] == stream.events[-2].id


async def test_stream_idle_sends_heartbeats(tmp_path):
    settings = make_settings(tmp_path / "data", SCOUT_SSE_PING_S="0.2")
    async with run_scout(settings) as scout, scout.client() as client:
        job_id = await planned_job(client)
        comments = []
        started = time.monotonic()
        async with asyncio.timeout(5.0), client.stream("GET", events_url(job_id)) as response:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    comments.append(line)
                if len(comments) == 3:
                    break
        elapsed = time.monotonic() - started

    assert len(comments) == 3
    assert elapsed < 2.0


async def test_stream_second_server_follows_job(tmp_path):
    data_dir = tmp_path / "data"
    runner_settings = make_settings(data_dir, **LIVE_ENV)
    follower_settings = make_settings(data_dir, SCOUT_EVENT_POLL_S="0.05")
    async with (
        run_scout(runner_settings) as runner,
        run_scout(follower_settings) as follower,
        runner.client() as runner_client,
        follower.client() as follower_client,
    ):
        job_id = await planned_job(runner_client)
        ready = [asyncio.Event(), asyncio.Event()]
        local = asyncio.create_task(
            read_stream(runner_client, job_id, on_event=signal_first_event(ready[0]))
        )
        remote = asyncio.create_task(
            read_stream(follower_client, job_id, on_event=signal_first_event(ready[1]))
        )
        await wait_subscribed(ready)
        response = await approve(runner_client, job_id)
        assert response.status_code == 200, response.text
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            local_stream, remote_stream = await asyncio.gather(local, remote)
        follower_runs = follower.service.runner.active_runs

    assert follower_runs == 0
    assert local_stream.events[-1].name == "end"
    assert sum(event.name == "token" for event in remote_stream.events) == LIVE_TOKENS
    assert remote_stream.events == local_stream.events


async def test_status_never_behind_stream(tmp_path):
    async with live_client(tmp_path) as client:
        job_id = await submit(client, QUESTION)
        seen: list[tuple[str, str]] = []
        views_at_end: list[dict[str, Any]] = []
        ready = asyncio.Event()

        async def compare_status(event: Event) -> None:
            ready.set()
            if event.name not in ("status", "end"):
                return
            view = (await client.get(f"/status/{job_id}")).json()
            seen.append((event.data["status"], view["status"]))
            if event.name == "end":
                views_at_end.append(view)

        reader = asyncio.create_task(read_stream(client, job_id, on_event=compare_status))
        await wait_subscribed([ready])
        await wait_for_status(client, job_id, {"awaiting_approval"})
        await approve(client, job_id)
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            stream = await reader

    (end_view,) = views_at_end
    report = next(event.data for event in stream.events if event.name == "report")
    behind = [
        (streamed, polled)
        for streamed, polled in seen
        if STATUS_RANK[polled] < STATUS_RANK[streamed]
    ]
    assert [streamed for streamed, _ in seen] == [
        "pending",
        "awaiting_approval",
        "running",
        "done",
        "done",
    ]
    assert behind == []
    assert end_view["status"] == "done"
    assert end_view["report"] == report["report"]
    assert end_view["citations"] == report["citations"]


async def test_stream_invalid_last_event_id(client: httpx.AsyncClient):
    job_id = await submit(client, QUESTION)
    for value in ("-1", "abc", "99999999999999999999", str(2**63)):
        response = await client.get(events_url(job_id), headers={"Last-Event-ID": value})
        fields = [error["field"] for error in response.json()["errors"]]
        assert response.status_code == 422, value
        assert response.headers["content-type"] == "application/problem+json", value
        assert fields == ["header.Last-Event-ID"], value

    response = await client.get(events_url(job_id), params={"last_event_id": "abc"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["query.last_event_id"]


async def test_stream_unknown_job_not_found(client: httpx.AsyncClient):
    response = await client.get(events_url("no-such-job"))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404
