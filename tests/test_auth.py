"""Bearer-token access control: 401s, per-key job isolation, per-key limits and secret-free logs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from app import cli
from app.config import ConfigError, Settings
from app.logs import ACCESS_LOGGER, AccessTokenRedactor, redact
from tests.conftest import RunningScout, make_settings, run_scout
from tests.helpers import approve, submit, wait_for_status
from tests.support import assert_problem, replay_events

# Made-up keys for these tests only.
KEY_A = "scout-test-key-alpha-0123456789"
KEY_B = "scout-test-key-bravo-9876543210"
WRONG_KEY = "scout-test-key-wrong-5555555555"
QUESTION = "How does a lighthouse lens focus its beam?"
OTHER_QUESTION = "Why do glaciers calve?"
STREAM_TIMEOUT_S = 10.0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def auth_settings(tmp_path: Path, **env: str) -> Settings:
    return make_settings(tmp_path / "data", SCOUT_API_KEYS=f"{KEY_A},{KEY_B}", **env)


@pytest.fixture
async def auth_scout(tmp_path: Path) -> AsyncIterator[RunningScout]:
    async with run_scout(auth_settings(tmp_path)) as running:
        yield running


async def first_event(
    client: httpx.AsyncClient, job_id: str, params: dict[str, str] | None = None
) -> tuple[str, Any]:
    """Open a job's event stream, read its first event with data and close the stream."""
    async with asyncio.timeout(STREAM_TIMEOUT_S):
        async with aconnect_sse(
            client, "GET", f"/research/{job_id}/events", params=params
        ) as source:
            async for event in source.aiter_sse():
                if event.data:  # the stream opens with a data-less `retry:` frame
                    return event.event, orjson.loads(event.data)
    raise AssertionError("the event stream closed before its first event")


async def protected_requests(client: httpx.AsyncClient, job_id: str) -> list[httpx.Response]:
    """Send one request to every protected route, with whatever headers `client` has."""
    return [
        await client.post("/research", json={"question": QUESTION}),
        await client.get("/research"),
        await client.get(f"/status/{job_id}"),
        await client.post(f"/research/{job_id}/approve", json={"approved": True}),
        await client.post(f"/research/{job_id}/cancel"),
        await client.get(f"/research/{job_id}/events"),
    ]


def assert_unauthorized(response: httpx.Response) -> None:
    assert_problem(response, 401, "header.Authorization")
    assert response.headers["www-authenticate"].startswith("Bearer")


# ---------------------------------------------------------------------------
# 401 on protected routes, public routes open


async def test_protected_routes_without_key_401(auth_scout):
    async with auth_scout.client(headers=bearer(KEY_A)) as owner:
        job_id = await submit(owner, QUESTION)

    async with auth_scout.client() as anonymous:
        responses = await protected_requests(anonymous, job_id)
        unknown_job = await anonymous.get("/status/no-such-job")

    for response in [*responses, unknown_job]:
        assert_unauthorized(response)


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(f"Bearer {WRONG_KEY}", id="wrong-key"),
        pytest.param(f"Bearer {KEY_A[:-1]}", id="key-prefix"),
        pytest.param(f"Basic {KEY_A}", id="basic-scheme"),
        pytest.param("Bearer", id="empty-token"),
    ],
)
async def test_protected_routes_wrong_key_401(auth_scout, authorization):
    async with auth_scout.client(headers=bearer(KEY_A)) as owner:
        job_id = await submit(owner, QUESTION)

    async with auth_scout.client(headers={"Authorization": authorization}) as stranger:
        responses = await protected_requests(stranger, job_id)

    for response in responses:
        assert_unauthorized(response)
    async with auth_scout.client(headers=bearer(KEY_A)) as owner:
        listed = (await owner.get("/research")).json()["jobs"]
    assert [job["job_id"] for job in listed] == [job_id]


async def test_public_routes_need_no_key(auth_scout):
    async with auth_scout.client() as anonymous:
        health = await anonymous.get("/health")
        page = await anonymous.get("/")
        script = await anonymous.get("/static/app.js")
        document = await anonymous.get("/openapi.json")
        corpus_file = await anonymous.get("/corpus/lighthouses.md")

    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert document.status_code == 200
    assert document.json()["openapi"].startswith("3.")
    assert corpus_file.status_code == 200


async def test_key_works_on_every_route(auth_scout):
    async with auth_scout.client(headers=bearer(KEY_A)) as owner:
        job_id = await submit(owner, QUESTION)
        await wait_for_status(owner, job_id, {"awaiting_approval"})
        listed = await owner.get("/research")
        event, data = await first_event(owner, job_id)
        approved = await approve(owner, job_id)
        view = await wait_for_status(owner, job_id, {"done", "failed"})

    assert listed.status_code == 200
    assert [job["job_id"] for job in listed.json()["jobs"]] == [job_id]
    assert event == "status"
    assert data["job_id"] == job_id
    assert approved.status_code == 200
    assert view["status"] == "done"


# ---------------------------------------------------------------------------
# Each job belongs to its key


async def test_other_key_gets_404_everywhere(auth_scout):
    async with (
        auth_scout.client(headers=bearer(KEY_A)) as owner,
        auth_scout.client(headers=bearer(KEY_B)) as other,
        auth_scout.client() as anonymous,
    ):
        job_id = await submit(owner, QUESTION)
        await wait_for_status(owner, job_id, {"awaiting_approval"})

        responses = {
            "status": await other.get(f"/status/{job_id}"),
            "approve": await other.post(f"/research/{job_id}/approve", json={"approved": True}),
            "reject": await other.post(f"/research/{job_id}/approve", json={"approved": False}),
            "cancel": await other.post(f"/research/{job_id}/cancel"),
            "events (header)": await other.get(f"/research/{job_id}/events"),
            "events (access_token)": await anonymous.get(
                f"/research/{job_id}/events", params={"access_token": KEY_B}
            ),
        }
        other_list = (await other.get("/research")).json()["jobs"]
        owner_view = (await owner.get(f"/status/{job_id}")).json()

    for route, response in responses.items():
        problem = assert_problem(response, 404, "path.job_id")
        assert problem["type"] == "urn:scout:problem:job-not-found", route
    assert other_list == []
    # Nothing that the other key sent changed the job.
    assert owner_view["status"] == "awaiting_approval"
    assert owner_view["error"] is None


async def test_list_shows_only_own_jobs(auth_scout):
    async with (
        auth_scout.client(headers=bearer(KEY_A)) as client_a,
        auth_scout.client(headers=bearer(KEY_B)) as client_b,
    ):
        jobs_a = {await submit(client_a, QUESTION), await submit(client_a, OTHER_QUESTION)}
        jobs_b = {await submit(client_b, QUESTION)}

        listed_a = (await client_a.get("/research")).json()["jobs"]
        listed_b = (await client_b.get("/research")).json()["jobs"]
        filtered_b = (await client_b.get("/research", params={"status": "pending"})).json()

    assert {job["job_id"] for job in listed_a} == jobs_a
    assert {job["job_id"] for job in listed_b} == jobs_b
    assert {job["job_id"] for job in filtered_b["jobs"]} <= jobs_b


async def test_finished_job_stays_hidden(auth_scout):
    # Scout caches a finished job's view, and the cache must not serve it to another key.
    async with (
        auth_scout.client(headers=bearer(KEY_A)) as owner,
        auth_scout.client(headers=bearer(KEY_B)) as other,
    ):
        job_id = await submit(owner, QUESTION)
        await wait_for_status(owner, job_id, {"awaiting_approval"})
        assert (await approve(owner, job_id)).status_code == 200
        await wait_for_status(owner, job_id, {"done"})
        await owner.get(f"/status/{job_id}")

        response = await other.get(f"/status/{job_id}")

    assert_problem(response, 404, "path.job_id")


# ---------------------------------------------------------------------------
# The access_token query parameter


async def test_access_token_opens_event_stream(auth_scout):
    async with auth_scout.client(headers=bearer(KEY_A)) as owner:
        job_id = await submit(owner, QUESTION)
        await wait_for_status(owner, job_id, {"awaiting_approval"})
        assert (await approve(owner, job_id)).status_code == 200
        await wait_for_status(owner, job_id, {"done"})

    async with auth_scout.client(params={"access_token": KEY_A}) as browser:
        events = await replay_events(browser, job_id)

    names = [name for name, data in events if data is not None]
    assert names[0] == "status"
    assert names[-1] == "end"
    assert "report" in names


async def test_access_token_rejected_off_events(auth_scout):
    async with auth_scout.client(headers=bearer(KEY_A)) as owner:
        job_id = await submit(owner, QUESTION)
        await wait_for_status(owner, job_id, {"awaiting_approval"})

    token = {"access_token": KEY_A}
    async with auth_scout.client() as anonymous:
        responses = [
            await anonymous.get(f"/status/{job_id}", params=token),
            await anonymous.get("/research", params=token),
            await anonymous.post("/research", params=token, json={"question": QUESTION}),
            await anonymous.post(
                f"/research/{job_id}/approve", params=token, json={"approved": True}
            ),
            await anonymous.post(f"/research/{job_id}/cancel", params=token),
        ]
        wrong_token = await anonymous.get(
            f"/research/{job_id}/events", params={"access_token": WRONG_KEY}
        )

    for response in [*responses, wrong_token]:
        assert_unauthorized(response)


# ---------------------------------------------------------------------------
# Idempotency keys are scoped per API key


async def test_idempotency_key_scoped_per_api_key(auth_scout):
    shared = {"Idempotency-Key": "order-42"}
    async with (
        auth_scout.client(headers=bearer(KEY_A)) as client_a,
        auth_scout.client(headers=bearer(KEY_B)) as client_b,
    ):
        first_a = await client_a.post("/research", json={"question": QUESTION}, headers=shared)
        first_b = await client_b.post(
            "/research", json={"question": OTHER_QUESTION}, headers=shared
        )
        mismatch_a = await client_a.post(
            "/research", json={"question": OTHER_QUESTION}, headers=shared
        )
        replay_a = await client_a.post("/research", json={"question": QUESTION}, headers=shared)
        replay_b = await client_b.post(
            "/research", json={"question": OTHER_QUESTION}, headers=shared
        )
        question_b = (await client_b.get(f"/status/{first_b.json()['job_id']}")).json()["question"]

    assert first_a.status_code == 202
    assert first_b.status_code == 202
    assert first_b.json()["job_id"] != first_a.json()["job_id"]
    assert "idempotent-replayed" not in first_b.headers
    assert question_b == OTHER_QUESTION
    assert_problem(mismatch_a, 422, "header.Idempotency-Key")
    assert replay_a.status_code == 202
    assert replay_a.json()["job_id"] == first_a.json()["job_id"]
    assert replay_a.headers["idempotent-replayed"] == "true"
    assert replay_b.status_code == 202
    assert replay_b.json()["job_id"] == first_b.json()["job_id"]


# ---------------------------------------------------------------------------
# Per-key limits


def assert_too_many_requests(response: httpx.Response) -> None:
    assert_problem(response, 429, "header.Authorization")
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= 60


async def test_submit_rate_limit_per_key(tmp_path: Path):
    settings = auth_settings(tmp_path, SCOUT_SUBMIT_RATE_PER_MIN="3")
    async with (
        run_scout(settings) as scout,
        scout.client(headers=bearer(KEY_A)) as client_a,
        scout.client(headers=bearer(KEY_B)) as client_b,
    ):
        accepted = [await submit(client_a, f"{QUESTION} ({n})") for n in range(3)]
        fourth = await client_a.post("/research", json={"question": QUESTION})
        other_key = await client_b.post("/research", json={"question": QUESTION})
        listed_a = (await client_a.get("/research")).json()["jobs"]

    assert len(set(accepted)) == 3
    assert_too_many_requests(fourth)
    assert "3 jobs in the last minute" in fourth.json()["detail"]
    assert other_key.status_code == 202
    assert {job["job_id"] for job in listed_a} == set(accepted)


async def test_unfinished_limit_per_key(tmp_path: Path):
    settings = auth_settings(tmp_path, SCOUT_MAX_UNFINISHED_PER_KEY="2")
    async with (
        run_scout(settings) as scout,
        scout.client(headers=bearer(KEY_A)) as client_a,
        scout.client(headers=bearer(KEY_B)) as client_b,
    ):
        first = await submit(client_a, QUESTION)
        await submit(client_a, OTHER_QUESTION)
        third = await client_a.post("/research", json={"question": QUESTION})
        other_key = await client_b.post("/research", json={"question": QUESTION})

        # Cancelling a job frees its place.
        assert (await client_a.post(f"/research/{first}/cancel")).status_code == 200
        after_cancel = await client_a.post("/research", json={"question": QUESTION})

    assert_too_many_requests(third)
    assert "2 unfinished jobs" in third.json()["detail"]
    assert other_key.status_code == 202
    assert after_cancel.status_code == 202


async def test_idempotent_retry_at_limit_replays(tmp_path: Path):
    # A client whose response was lost retries with the same Idempotency-Key. The job
    # already exists, so the retry must return it even though the key is at its limits.
    settings = auth_settings(
        tmp_path, SCOUT_MAX_UNFINISHED_PER_KEY="1", SCOUT_SUBMIT_RATE_PER_MIN="1"
    )
    key = {"Idempotency-Key": "retry-1"}
    async with run_scout(settings) as scout, scout.client(headers=bearer(KEY_A)) as client:
        first = await client.post("/research", json={"question": QUESTION}, headers=key)
        retry = await client.post("/research", json={"question": QUESTION}, headers=key)
        mismatch = await client.post("/research", json={"question": OTHER_QUESTION}, headers=key)
        new_job = await client.post("/research", json={"question": OTHER_QUESTION})

    assert first.status_code == 202
    assert retry.status_code == 202, retry.text
    assert retry.json()["job_id"] == first.json()["job_id"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert_problem(mismatch, 422, "header.Idempotency-Key")
    assert_too_many_requests(new_job)


# ---------------------------------------------------------------------------
# Keys never reach the logs


# The test's own httpx clients log each URL they request, query string included. With
# offline providers the server makes no HTTP requests, so these loggers are client-side only.
CLIENT_LOGGERS = ("httpx", "httpcore")


def server_log_text(records: list[logging.LogRecord]) -> str:
    """Join the server's log records, leaving out the test clients' own request lines."""
    return "\n".join(
        f"{record.name} {record.getMessage()}"
        for record in records
        if record.name.partition(".")[0] not in CLIENT_LOGGERS
    )


async def test_keys_absent_from_logs(tmp_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    async with run_scout(auth_settings(tmp_path)) as scout:
        # make_server set uvicorn's loggers to the test server's level, WARNING.
        caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
        async with (
            scout.client(headers=bearer(KEY_A)) as owner,
            scout.client(params={"access_token": KEY_A}) as browser,
            scout.client(headers=bearer(WRONG_KEY)) as stranger,
        ):
            job_id = await submit(owner, QUESTION, **{"Idempotency-Key": "log-check"})
            await wait_for_status(owner, job_id, {"awaiting_approval"})
            assert (await approve(owner, job_id)).status_code == 200
            await wait_for_status(owner, job_id, {"done"})
            events = await replay_events(browser, job_id)
            assert events[-1][0] == "end"
            assert (await owner.get("/research")).status_code == 200
            assert (await stranger.get(f"/status/{job_id}")).status_code == 401
            wrong_token = await browser.get(
                f"/research/{job_id}/events", params={"access_token": WRONG_KEY}
            )
            assert wrong_token.status_code == 401

    text = server_log_text(caplog.records)
    access_lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    event_lines = [line for line in access_lines if f"/research/{job_id}/events" in line]
    assert event_lines, "uvicorn's access log recorded no event stream request"
    assert all("access_token=[redacted]" in line for line in event_lines), event_lines
    for secret in (KEY_A, WRONG_KEY):
        assert secret not in text
        assert secret[:16] not in text


def test_redactor_rewrites_access_line():
    record = logging.LogRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        (
            "127.0.0.1:5000",
            "GET",
            f"/research/j1/events?last_event_id=7&access_token={KEY_A}&x=1",
            "1.1",
            200,
        ),
        None,
    )

    assert AccessTokenRedactor().filter(record) is True
    assert record.getMessage() == (
        '127.0.0.1:5000 - "GET /research/j1/events?last_event_id=7'
        '&access_token=[redacted]&x=1 HTTP/1.1" 200'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"/e?access_token={KEY_A}", "/e?access_token=[redacted]", id="only-parameter"),
        pytest.param(
            f"/e?ACCESS_TOKEN={KEY_A}&a=1", "/e?ACCESS_TOKEN=[redacted]&a=1", id="upper-case"
        ),
        pytest.param(
            f'"GET /e?access_token={KEY_A} HTTP/1.1"',
            '"GET /e?access_token=[redacted] HTTP/1.1"',
            id="in-request-line",
        ),
        pytest.param("/e?access_token=", "/e?access_token=[redacted]", id="empty-value"),
        pytest.param("/e?my_access_token_x=1", "/e?my_access_token_x=1", id="other-parameter"),
        pytest.param("/status/j1", "/status/j1", id="no-query"),
    ],
)
def test_redact_access_token_values(text, expected):
    assert redact(text) == expected


# ---------------------------------------------------------------------------
# Auth off, the bind warning and key configuration


async def test_no_keys_needs_no_authorization(scout, client):
    job_id = await submit(client, QUESTION)
    await wait_for_status(client, job_id, {"awaiting_approval"})
    event, _ = await first_event(client, job_id)
    assert event == "status"
    assert (await approve(client, job_id)).status_code == 200
    view = await wait_for_status(client, job_id, {"done"})
    listed = (await client.get("/research")).json()["jobs"]
    async with scout.client(headers=bearer(WRONG_KEY)) as with_header:
        status_with_header = await with_header.get(f"/status/{job_id}")

    assert view["status"] == "done"
    assert [job["job_id"] for job in listed] == [job_id]
    assert status_with_header.status_code == 200


@pytest.mark.parametrize(
    ("host", "warns"),
    [
        ("0.0.0.0", True),
        ("::", True),
        ("192.0.2.10", True),
        ("scout.example", True),
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("localhost", False),
        ("::1", False),
        ("[::1]", False),
    ],
)
def test_bind_warning_without_keys(tmp_path: Path, caplog, host, warns):
    settings = make_settings(tmp_path / "data")

    with caplog.at_level(logging.WARNING, logger="app.cli"):
        warned = cli.warn_if_unprotected(host, settings)

    assert warned is warns
    messages = [r.getMessage() for r in caplog.records if r.name == "app.cli"]
    if warns:
        assert len(messages) == 1
        assert f"binding {host} with no API keys" in messages[0]
        assert "SCOUT_API_KEYS" in messages[0]
    else:
        assert messages == []


def test_bind_warning_silent_with_keys(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="app.cli"):
        warned = cli.warn_if_unprotected("0.0.0.0", auth_settings(tmp_path))

    assert warned is False
    assert [r for r in caplog.records if r.name == "app.cli"] == []


class _NotStartedServer:
    """Stands in for the uvicorn server, so `scout serve` returns without binding a port."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.ran = False

    def run(self) -> None:
        self.ran = True


@pytest.mark.parametrize(
    ("keys", "warns"), [pytest.param("", True, id="no-keys"), pytest.param(KEY_A, False, id="keys")]
)
def test_serve_command_bind_warning(tmp_path: Path, monkeypatch, caplog, keys, warns):
    servers: list[_NotStartedServer] = []

    def make_server(app, host, port, log_level="info"):  # type: ignore[no-untyped-def]
        servers.append(_NotStartedServer(host, port))
        return servers[-1]

    monkeypatch.setattr("app.server.make_server", make_server)
    monkeypatch.delenv("SCOUT_API_KEYS_FILE", raising=False)
    for name, value in {
        "SCOUT_API_KEYS": keys,
        "SCOUT_DATA_DIR": str(tmp_path / "data"),
        "SCOUT_LLM": "offline",
        "SCOUT_SEARCH": "local",
        "SCOUT_HOST": "127.0.0.1",
        "SCOUT_PORT": "8000",
    }.items():
        monkeypatch.setenv(name, value)

    with caplog.at_level(logging.WARNING, logger="app.cli"):
        code = cli.main(["serve", "--host", "0.0.0.0", "--port", "0"])

    assert code == 0
    assert len(servers) == 1
    assert (servers[0].host, servers[0].port) == ("0.0.0.0", 0)
    assert servers[0].ran
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.cli"]
    assert bool(warnings) is warns, warnings


def test_keys_file_skips_comments_and_blanks(tmp_path: Path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"# Scout API keys, one per line\n\n  {KEY_A}  \n   # an indented comment\n\n{KEY_B}\n",
        encoding="utf-8",
    )

    settings = Settings.from_env({"SCOUT_API_KEYS_FILE": str(keys_file)})
    combined = Settings.from_env(
        {"SCOUT_API_KEYS_FILE": str(keys_file), "SCOUT_API_KEYS": f"{KEY_B}, {WRONG_KEY}"}
    )

    assert settings.api_keys == (KEY_A, KEY_B)
    assert set(combined.api_keys) == {KEY_A, KEY_B, WRONG_KEY}
    assert len(combined.api_keys) == 3


async def test_keys_file_protects_routes(tmp_path: Path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# test keys\n\n{KEY_B}\n", encoding="utf-8")
    settings = make_settings(tmp_path / "data", SCOUT_API_KEYS_FILE=str(keys_file))

    async with (
        run_scout(settings) as scout,
        scout.client() as anonymous,
        scout.client(headers=bearer(KEY_B)) as keyed,
    ):
        unauthorized = await anonymous.get("/research")
        authorized = await keyed.get("/research")

    assert_unauthorized(unauthorized)
    assert authorized.status_code == 200


def test_missing_keys_file_names_variable(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SCOUT_API_KEYS_FILE": str(tmp_path / "absent")})

    assert "SCOUT_API_KEYS_FILE" in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"SCOUT_API_KEYS": "short-key"}, id="too-short"),
        pytest.param({"SCOUT_API_KEYS": f"{KEY_A},short-key"}, id="one-of-two-too-short"),
        pytest.param({"SCOUT_API_KEYS": "has a space in the key"}, id="space"),
        pytest.param({"SCOUT_API_KEYS": "non-ascii-key-ünïcødé-value"}, id="non-ascii"),
    ],
)
def test_invalid_keys_name_variables(env):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)

    message = str(caught.value)
    assert "SCOUT_API_KEYS" in message
    assert "SCOUT_API_KEYS_FILE" in message
    assert "16" in message
    assert "short-key" not in message  # the message must not repeat a secret


def test_short_key_in_file_rejected(tmp_path: Path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{KEY_A}\nshort-key\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SCOUT_API_KEYS_FILE": str(keys_file)})

    assert "SCOUT_API_KEYS_FILE" in str(caught.value)
    assert "short-key" not in str(caught.value)
