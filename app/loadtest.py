"""`scout loadtest`: run N jobs through a deployment and report latency and throughput.

Each job is submitted, its plan approved as soon as it is drafted, and followed by
polling GET /status until it finishes. Only the base URL the user gives is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx

from app.cli import auth_headers

TERMINAL = {"done", "partial", "failed"}
POLL_S = 0.1
QUESTIONS = (
    "How does Scout recover a job after a restart?",
    "How does Scout stream events to many subscribers?",
    "What happens when the model endpoint is rate limited?",
    "How are job state transitions enforced?",
    "How does Scout deduplicate sources?",
)


@dataclass
class JobResult:
    """One job's outcome and phase times, in seconds, as the load test observed them."""

    job_id: str | None = None
    status: str = "not submitted"
    error: str | None = None
    planning_s: float | None = None
    research_s: float | None = None
    total_s: float | None = None


@dataclass
class LoadReport:
    """The load test's results: per job, and the summary the table ends with."""

    jobs: list[JobResult] = field(default_factory=list)
    wall_s: float = 0.0
    status_latencies_ms: list[float] = field(default_factory=list)
    request_errors: int = 0
    requests: int = 0

    def summary(self) -> dict[str, float | int | None]:
        completed = sum(1 for job in self.jobs if job.status == "done")
        latencies = sorted(self.status_latencies_ms)
        return {
            "jobs": len(self.jobs),
            "completed": completed,
            "wall_s": round(self.wall_s, 3),
            "jobs_per_minute": round(completed / self.wall_s * 60, 2) if self.wall_s else None,
            "status_p50_ms": round(_percentile(latencies, 50), 2) if latencies else None,
            "status_p95_ms": round(_percentile(latencies, 95), 2) if latencies else None,
            "error_rate": round(self.request_errors / self.requests, 4) if self.requests else 0.0,
        }


async def run_load(
    base_url: str, jobs: int, concurrency: int, timeout_s: float, api_key: str | None = None
) -> LoadReport:
    """Run `jobs` jobs, at most `concurrency` at a time, against `base_url`."""
    report = LoadReport()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2)
    started = time.perf_counter()
    headers = auth_headers(api_key)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=30.0, limits=limits, headers=headers
    ) as client:

        async def one(index: int) -> JobResult:
            async with gate:
                return await _run_job(client, QUESTIONS[index % len(QUESTIONS)], report, timeout_s)

        report.jobs = list(await asyncio.gather(*(one(i) for i in range(jobs))))
    report.wall_s = time.perf_counter() - started
    return report


async def _run_job(
    client: httpx.AsyncClient, question: str, report: LoadReport, timeout_s: float
) -> JobResult:
    result = JobResult()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            response = await _request(client, report, "POST", "/research", {"question": question})
            result.job_id = response.json()["job_id"]

            view = await _poll(client, report, result.job_id, {"awaiting_approval"} | TERMINAL)
            result.planning_s = time.perf_counter() - started
            if view["status"] == "awaiting_approval":
                approved = time.perf_counter()
                await _request(
                    client, report, "POST", f"/research/{result.job_id}/approve", {"approved": True}
                )
                view = await _poll(client, report, result.job_id, TERMINAL)
                result.research_s = time.perf_counter() - approved
            result.status, result.error = view["status"], view.get("error")
    except TimeoutError:
        result.status, result.error = "timed out", f"not finished within {timeout_s:.0f} s"
    except (httpx.HTTPError, RequestFailed) as exc:
        result.status, result.error = "error", str(exc)
    result.total_s = time.perf_counter() - started
    return result


class RequestFailed(Exception):
    """The server returned an error status to a load test request."""


async def _request(
    client: httpx.AsyncClient, report: LoadReport, method: str, path: str, body: object = None
) -> httpx.Response:
    report.requests += 1
    try:
        response = await client.request(method, path, json=body)
    except httpx.HTTPError:
        report.request_errors += 1
        raise
    if response.status_code >= 400:
        report.request_errors += 1
        raise RequestFailed(
            f"{method} {path} returned {response.status_code}: {response.text[:200]}"
        )
    return response


async def _poll(
    client: httpx.AsyncClient, report: LoadReport, job_id: str, statuses: set[str]
) -> dict:
    while True:
        sent = time.perf_counter()
        response = await _request(client, report, "GET", f"/status/{job_id}")
        report.status_latencies_ms.append((time.perf_counter() - sent) * 1000)
        view = response.json()
        if view["status"] in statuses:
            return view
        await asyncio.sleep(POLL_S)


def _percentile(ordered: list[float], percent: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(percent) - 1]


def format_table(report: LoadReport) -> str:
    """Render the per-job table and the summary as plain text."""
    lines = [f"{'job':<36}  {'status':<12}  {'planning s':>10}  {'research s':>10}  {'total s':>8}"]
    for job in report.jobs:
        lines.append(
            f"{job.job_id or '-':<36}  {job.status:<12}  {_seconds(job.planning_s):>10}"
            f"  {_seconds(job.research_s):>10}  {_seconds(job.total_s):>8}"
        )
    summary = report.summary()
    lines += [
        "",
        f"completed        {summary['completed']}/{summary['jobs']}",
        f"wall time        {summary['wall_s']:.2f} s",
        f"throughput       {summary['jobs_per_minute']} jobs/min",
        f"status p50/p95   {summary['status_p50_ms']} / {summary['status_p95_ms']} ms",
        f"error rate       {summary['error_rate']:.2%}",
    ]
    errors = [job for job in report.jobs if job.error and job.status != "done"]
    lines += [f"  {job.job_id or '-'}: {job.error}" for job in errors]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(args: argparse.Namespace) -> int:
    report = asyncio.run(
        run_load(args.base_url, args.jobs, args.concurrency, args.timeout, args.api_key)
    )
    if args.json:
        print(
            json.dumps({"jobs": [asdict(job) for job in report.jobs], "summary": report.summary()})
        )
    else:
        print(format_table(report))
    return 0 if report.summary()["completed"] == len(report.jobs) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs", type=int, default=10, help="number of jobs to run (default %(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="jobs in flight at once (default %(default)s)"
    )
    parser.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000",
        help="the server to load (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds each job may take (default %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the table"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(argparse.ArgumentParser().parse_args()))
