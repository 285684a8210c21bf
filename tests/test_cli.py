"""`scout research` as a user runs it: a separate process talking to a running server."""

from __future__ import annotations

from pathlib import Path

from app.client import _show
from tests.conftest import make_settings, run_scout
from tests.helpers import PROJECT_DIR, SCOUT_COMMAND, run_command, wait_for_status

CLI_TIMEOUT_S = 30.0
QUESTION = "How does a Fresnel lens focus a lighthouse beam?"


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `scout ARGS` in a child process and return its exit code, stdout and stderr."""
    return await run_command(*SCOUT_COMMAND, *args, timeout_s=CLI_TIMEOUT_S)


async def only_job(client) -> dict:
    jobs = (await client.get("/research")).json()["jobs"]
    assert len(jobs) == 1, jobs
    return (await client.get(f"/status/{jobs[0]['job_id']}")).json()


async def test_research_approve_prints_report(scout, client):
    code, stdout, stderr = await run_cli(
        "research", QUESTION, "--approve", "--base-url", scout.base_url, "--timeout", "20"
    )

    view = await only_job(client)
    assert code == 0, stderr
    assert view["status"] == "done"
    assert stdout.strip() == view["report"].strip()
    assert "plan:" in stderr
    assert f"job {view['job_id']} done" in stderr


async def test_research_follow_streams_report(scout, client):
    code, stdout, stderr = await run_cli(
        "research",
        QUESTION,
        "--follow",
        "--approve",
        "--base-url",
        scout.base_url,
        "--timeout",
        "20",
    )

    view = await only_job(client)
    assert code == 0, stderr
    assert view["status"] == "done"
    assert stdout.strip() == view["report"].strip()
    assert "source [1]" in stderr


async def test_research_without_approve_waits(scout, client):
    code, stdout, stderr = await run_cli(
        "research", QUESTION, "--base-url", scout.base_url, "--timeout", "20"
    )

    view = await only_job(client)
    assert code == 0
    assert stdout == ""
    assert "awaits approval" in stderr
    assert f"curl -X POST {scout.base_url}/research/{view['job_id']}/approve" in stderr
    assert (await wait_for_status(client, view["job_id"], {"awaiting_approval"}))["plan"]


async def test_research_sends_api_key(tmp_path: Path):
    key = "cli-test-key-0123456789"
    settings = make_settings(tmp_path / "data", SCOUT_API_KEYS=key)

    async with run_scout(settings) as scout:
        denied = await run_cli("research", QUESTION, "--approve", "--base-url", scout.base_url)
        code, stdout, stderr = await run_cli(
            "research", QUESTION, "--approve", "--base-url", scout.base_url, "--api-key", key
        )

    assert denied[0] == 1
    assert "401" in denied[2]
    assert code == 0, stderr
    assert "## Sources" in stdout
    assert key not in stdout + stderr


async def test_loadtest_sends_api_key(tmp_path: Path):
    key = "cli-test-key-9876543210"
    # The load test's questions are about Scout itself, which the project's docs/ corpus covers.
    settings = make_settings(
        tmp_path / "data", SCOUT_API_KEYS=key, SCOUT_CORPUS_DIR=str(PROJECT_DIR / "docs")
    )

    async with run_scout(settings) as scout:
        code, stdout, stderr = await run_cli(
            "loadtest", "--jobs", "2", "--base-url", scout.base_url, "--api-key", key
        )

    assert code == 0, stdout + stderr
    assert "completed        2/2" in stdout


async def test_follow_prints_dropped_and_reset(capsys):
    events = [
        ("token", {"text": "Stale text"}),
        (
            "source_dropped",
            {"url": "https://example.com/x", "title": "X", "reason": "it instructs the agent"},
        ),
        ("token", {"text": "Fresh text", "reset": True}),
    ]

    for name, data in events:
        await _show(None, "job-1", name, data, True, "running")  # type: ignore[arg-type]

    printed = capsys.readouterr()
    assert printed.out == "Stale text\nFresh text"
    assert "  dropped https://example.com/x: it instructs the agent\n" in printed.err
    assert "report restarted" in printed.err
