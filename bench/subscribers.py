#!/usr/bin/env python3
"""Does a job slow down as subscribers join? Research time and server memory per subscriber count.

Starts `scout serve` (offline, a fixed report length) on a free 127.0.0.1 port. For each
subscriber count it submits a job, opens that many event streams while the job awaits
approval, and approves it. It records the job's own research time (from GET /status),
the time until every subscriber has read `end`, and the server's resident memory. All
load goes to 127.0.0.1 and is bounded, and the server is stopped by its PID.

    uv run python bench/subscribers.py --counts 0,10,100,1000 --tokens 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def subscribe(port: int, job_id: str, joined: asyncio.Event, counter: list[int]) -> float:
    """Read one job's event stream over a raw socket; return when `end` arrives."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"GET /research/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    counter[0] += 1
    if counter[0] == counter[1]:
        joined.set()
    buffer = b""
    try:
        while b"event: end\n" not in buffer:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buffer = buffer[-64:] + chunk
        return time.perf_counter()
    finally:
        writer.close()


async def measure(base: str, port: int, pid: int, count: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        job_id = (
            await client.post("/research", json={"question": "How does Scout stream events?"})
        ).json()["job_id"]
        while (await client.get(f"/status/{job_id}")).json()["status"] != "awaiting_approval":
            await asyncio.sleep(0.01)

        joined, counter = asyncio.Event(), [0, count]
        readers = [
            asyncio.create_task(subscribe(port, job_id, joined, counter)) for _ in range(count)
        ]
        if count:
            await asyncio.wait_for(joined.wait(), 60)
            await asyncio.sleep(0.5)  # let the server register every subscription
        rss_before = rss_mib(pid)

        approved = time.perf_counter()
        await client.post(f"/research/{job_id}/approve", json={"approved": True})
        peak = rss_before
        while True:
            view = (await client.get(f"/status/{job_id}")).json()
            peak = max(peak, rss_mib(pid))
            if view["status"] in ("done", "partial", "failed"):
                break
            await asyncio.sleep(0.01)
        ends = await asyncio.gather(*readers)
        return {
            "subscribers": count,
            "research_s": view["timings"]["research_s"],
            "all_subscribers_done_s": round(
                (max(ends) if ends else time.perf_counter()) - approved, 3
            ),
            "rss_mib_idle_subscribed": round(rss_before, 1),
            "rss_mib_peak": round(peak, 1),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts", default="0,10,100,1000", help="subscriber counts, comma-separated"
    )
    parser.add_argument("--tokens", type=int, default=3000, help="report tokens per job")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="milliseconds between report tokens, to imitate a model's pace (default 0: no pause)",
    )
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args()

    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="scout-bench-")
    env = {
        **os.environ,
        "SCOUT_DATA_DIR": data_dir,
        "SCOUT_LLM": "offline",
        "SCOUT_SEARCH": "local",
        "SCOUT_OFFLINE_REPORT_TOKENS": str(args.tokens),
        "SCOUT_LOG_LEVEL": "WARNING",
        "SCOUT_OFFLINE_TOKEN_DELAY_MS": str(args.delay_ms),
    }
    command = [
        sys.executable,
        "-c",
        "from app.cli import main; raise SystemExit(main())",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(f"{base}/health")
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        rows = [await measure(base, port, server.pid, int(n)) for n in args.counts.split(",")]
    finally:
        server.terminate()
        server.wait(30)

    header = ("subscribers", "research s", "all done s", "RSS idle MiB", "RSS peak MiB")
    widths = (11, 10, 10, 12, 12)
    print("  ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    for row in rows:
        values = (
            row["subscribers"],
            row["research_s"],
            row["all_subscribers_done_s"],
            row["rss_mib_idle_subscribed"],
            row["rss_mib_peak"],
        )
        print("  ".join(f"{value:>{width}}" for value, width in zip(values, widths, strict=True)))
    if args.out:
        result = {"tokens": args.tokens, "delay_ms": args.delay_ms, "rows": rows}
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
