"""`scout loadtest` as a child process against a Scout server running in the test's loop."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

from app.config import Settings
from tests.conftest import make_settings, run_scout
from tests.helpers import SCOUT_COMMAND, run_command

REPO_DIR = Path(__file__).resolve().parent.parent
LOADTEST_TIMEOUT_S = 60.0
JOBS = 3
JOB_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SUMMARY_LINES = [
    rf"completed\s+{JOBS}/{JOBS}",
    r"wall time\s+\d+\.\d\d s",
    r"throughput\s+\d+(\.\d+)? jobs/min",
    r"status p50/p95\s+\d+(\.\d+)? / \d+(\.\d+)? ms",
    r"error rate\s+0\.00%",
]


async def run_loadtest(*args: str) -> tuple[int, str, str]:
    """Run `scout loadtest ARGS` and return its exit status, stdout and stderr."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SCOUT_", "NVIDIA_", "TAVILY_"))
    }
    return await run_command(
        *SCOUT_COMMAND, "loadtest", *args, timeout_s=LOADTEST_TIMEOUT_S, env=env
    )


def scout_settings(tmp_path: Path) -> Settings:
    # The guardrails are tested elsewhere and would only slow these jobs down.
    return make_settings(tmp_path / "data", SCOUT_GUARDRAILS="off")


def unused_port() -> int:
    """Return a loopback port that nothing listens on: bound once, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_loadtest_prints_table(tmp_path: Path) -> None:
    async with run_scout(scout_settings(tmp_path)) as scout, scout.client() as client:
        status, stdout, stderr = await run_loadtest(
            "--jobs", str(JOBS), "--base-url", scout.base_url
        )
        rows = re.findall(rf"^({JOB_ID})\s+(\S+)", stdout, re.MULTILINE)
        views = [(await client.get(f"/status/{job_id}")).json() for job_id, _ in rows]

    assert status == 0, stderr
    header = stdout.splitlines()[0].split()
    assert header[:2] == ["job", "status"], stdout
    assert len(rows) == JOBS, stdout
    assert [row_status for _, row_status in rows] == ["done"] * JOBS
    assert [view["status"] for view in views] == ["done"] * JOBS
    for line in SUMMARY_LINES:
        assert re.search(rf"^{line}$", stdout, re.MULTILINE), (line, stdout)


async def test_loadtest_json_summary(tmp_path: Path) -> None:
    async with run_scout(scout_settings(tmp_path)) as scout:
        status, stdout, stderr = await run_loadtest(
            "--jobs", str(JOBS), "--base-url", scout.base_url, "--json"
        )

    assert status == 0, stderr
    document = json.loads(stdout)
    summary = document["summary"]
    assert [job["status"] for job in document["jobs"]] == ["done"] * JOBS
    assert all(job["total_s"] > 0 for job in document["jobs"])
    assert summary["jobs"] == JOBS
    assert summary["completed"] == JOBS
    assert summary["wall_s"] > 0
    assert summary["jobs_per_minute"] > 0
    assert 0 < summary["status_p50_ms"] <= summary["status_p95_ms"]
    assert summary["error_rate"] == 0.0


async def test_loadtest_unreachable_server_exit_1() -> None:
    base_url = f"http://127.0.0.1:{unused_port()}"
    status, stdout, _ = await run_loadtest("--jobs", "2", "--base-url", base_url, "--json")

    summary = json.loads(stdout)["summary"]
    assert status == 1
    assert summary["completed"] == 0
    assert summary["error_rate"] == 1.0


async def test_loadtest_zero_jobs_rejected() -> None:
    status, stdout, stderr = await run_loadtest("--jobs", "0")

    assert status == 2
    assert stdout == ""
    assert "--jobs" in stderr
