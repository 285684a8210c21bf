"""`scout research`: submit a question to a server, approve its plan, print the report."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import httpx
import orjson
from httpx_sse import aconnect_sse

from app.cli import auth_headers

TERMINAL = {"done", "partial", "failed"}
POLL_START_S = 0.1
POLL_MAX_S = 1.0


class ClientError(Exception):
    """The server rejected a request; the message carries its problem detail."""


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_research(args: argparse.Namespace) -> int:
    """Run one job end to end; return 0 when it is done, 1 otherwise."""
    headers = auth_headers(args.api_key)
    async with httpx.AsyncClient(base_url=args.base_url, timeout=30.0, headers=headers) as client:
        try:
            job_id = await submit(client, args.question, args.idempotency_key)
            _note(f"job {job_id} submitted")
            if args.follow:
                status = await asyncio.wait_for(follow(client, job_id, args.approve), args.timeout)
            else:
                status = await asyncio.wait_for(poll(client, job_id, args.approve), args.timeout)
        except ClientError as exc:
            _note(f"scout: {exc}")
            return 1
        except httpx.HTTPError as exc:
            _note(f"scout: cannot reach {args.base_url}: {exc}")
            return 1
        except TimeoutError:
            _note(f"scout: the job did not finish within {args.timeout:.0f} s")
            return 1
    if status == "awaiting_approval" and not args.approve:
        return 0  # stopped at the review step, as asked
    return 0 if status == "done" else 1


async def submit(client: httpx.AsyncClient, question: str, key: str | None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    response = await client.post("/research", json={"question": question}, headers=headers)
    return _checked(response)["job_id"]


async def approve(client: httpx.AsyncClient, job_id: str) -> None:
    _checked(await client.post(f"/research/{job_id}/approve", json={"approved": True}))


async def poll(client: httpx.AsyncClient, job_id: str, auto_approve: bool) -> str:
    """Follow a job by polling GET /status; print the plan, then the report."""
    view = await _wait(client, job_id, TERMINAL | {"awaiting_approval"})
    if view["status"] == "awaiting_approval":
        _print_plan(view["plan"])
        if not auto_approve:
            _how_to_approve(client, job_id)
            return view["status"]
        await approve(client, job_id)
        _note("plan approved; researching")
        view = await _wait(client, job_id, TERMINAL)
    _print_outcome(view)
    return view["status"]


async def follow(client: httpx.AsyncClient, job_id: str, auto_approve: bool) -> str:
    """Follow a job on its event stream, reconnecting with the last event id when dropped."""
    last_id = 0
    status = "pending"
    while True:
        try:
            headers = {"Last-Event-ID": str(last_id)} if last_id else {}
            async with aconnect_sse(
                client, "GET", f"/research/{job_id}/events", headers=headers, timeout=None
            ) as source:
                async for event in source.aiter_sse():
                    if event.id:
                        last_id = int(event.id)
                    data = orjson.loads(event.data) if event.data else {}
                    if event.event == "end":
                        return data.get("status", status)
                    if event.event == "reconnect":
                        break
                    status = await _show(client, job_id, event.event, data, auto_approve, status)
                    if status == "awaiting_approval" and not auto_approve:
                        return status
        except (httpx.RemoteProtocolError, httpx.ReadError):
            _note("stream dropped; reconnecting")
        await asyncio.sleep(POLL_START_S)


async def _show(
    client: httpx.AsyncClient,
    job_id: str,
    name: str,
    data: dict[str, Any],
    auto_approve: bool,
    status: str,
) -> str:
    if name == "status" and data["status"] != status:
        status = data["status"]
        _note(f"[{time.strftime('%H:%M:%S')}] {status}")
        if status == "awaiting_approval":
            if not auto_approve:
                _how_to_approve(client, job_id)
            else:
                await approve(client, job_id)
        elif status in TERMINAL and data.get("error"):
            _note(f"error: {data['error']}")
    elif name == "plan":
        _print_plan(data["plan"], edited=data.get("edited", False))
    elif name == "source":
        _note(f"  source [{data['id']}] {data['title']} ({data['url']})")
    elif name == "source_dropped":
        _note(f"  dropped {data['url']}: {data['reason']}")
    elif name == "token":
        if data.get("reset"):
            # A resumed run writes the report again from its start; the text above is stale.
            sys.stdout.write("\n")
            _note("report restarted after a resumed run; the text below replaces the text above")
        sys.stdout.write(data["text"])
        sys.stdout.flush()
    elif name == "report":
        sys.stdout.write("\n")
    elif name == "error":
        _note(f"error: {data['error']}")
    return status


async def _wait(client: httpx.AsyncClient, job_id: str, statuses: set[str]) -> dict[str, Any]:
    delay = POLL_START_S
    while True:
        view = _checked(await client.get(f"/status/{job_id}"))
        if view["status"] in statuses:
            return view
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, POLL_MAX_S)


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = problem.get("detail") or response.text
        except ValueError:
            detail = response.text
        request = response.request
        raise ClientError(
            f"{request.method} {request.url.path} failed ({response.status_code}): {detail}"
        )
    return response.json()


def _print_plan(plan: dict[str, Any] | None, edited: bool = False) -> None:
    if not plan:
        return
    _note("edited plan:" if edited else "plan:")
    for number, step in enumerate(plan["steps"], start=1):
        _note(f"  {number}. {step['goal']}")
        for query in step["queries"]:
            _note(f"       search: {query}")


def _how_to_approve(client: httpx.AsyncClient, job_id: str) -> None:
    _note(
        "the plan awaits approval; approve it with:\n"
        f"  curl -X POST {client.base_url.join(f'research/{job_id}/approve')} "
        "-H 'Content-Type: application/json' -d '{\"approved\": true}'"
    )


def _print_outcome(view: dict[str, Any]) -> None:
    if view.get("report"):
        print(view["report"])
    if view.get("error"):
        _note(f"job {view['job_id']} {view['status']}: {view['error']}")
    else:
        _note(f"job {view['job_id']} {view['status']}")
