"""HTTP routes. They translate requests to service calls and add transport, never semantics."""

from __future__ import annotations

import base64
import binascii

import orjson
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from app.errors import FieldError, InvalidRequest
from app.jobs import JOB_STATUSES
from app.openapi import openapi_document
from app.problems import read_json_model
from app.schemas import ApprovalRequest, ResearchRequest
from app.service import Service
from app.streaming import job_events
from app.views import job_summary

MAX_LIST_LIMIT = 100
MAX_EVENT_ID = 2**62


def _service(request: Request) -> Service:
    return request.app.state.service


def _caller(request: Request) -> str:
    """Return the id of the request's API key; empty when auth is off."""
    return getattr(request.state, "caller", "")


def _json(
    body: bytes | object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(content, status, headers=headers, media_type="application/json")


async def research_collection(request: Request) -> Response:
    """Serve /research: POST submits a question, GET lists jobs (one route, so 405 lists both)."""
    if request.method == "POST":
        return await create_research(request)
    return await list_research(request)


async def create_research(request: Request) -> Response:
    service = _service(request)
    body = await read_json_model(request, ResearchRequest, service.settings.max_body_bytes)

    record, created = await service.submit(
        body, request.headers.get("idempotency-key"), _caller(request)
    )

    location = f"/status/{record.id}"
    headers = {"Location": location}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(
        {"job_id": record.id, "status": record.status, "links": {"self": location}}, 202, headers
    )


async def get_status(request: Request) -> Response:
    return _json(await _service(request).view(request.path_params["job_id"], _caller(request)))


async def approve(request: Request) -> Response:
    service = _service(request)
    job_id = request.path_params["job_id"]
    body = await read_json_model(request, ApprovalRequest, service.settings.max_body_bytes)
    if body.edited_plan is not None and not body.approved:
        raise InvalidRequest(
            "An edited_plan was sent with approved=false.",
            [
                FieldError(
                    "body.edited_plan", "Send edited_plan only with approved=true, or omit it."
                )
            ],
        )
    return _json(await service.approve(job_id, body, _caller(request)))


async def cancel(request: Request) -> Response:
    return _json(await _service(request).cancel(request.path_params["job_id"], _caller(request)))


async def list_research(request: Request) -> Response:
    service = _service(request)
    status = request.query_params.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise InvalidRequest(
            f"Unknown status {status!r}.",
            [FieldError("query.status", f"Use one of {', '.join(JOB_STATUSES)}.")],
        )
    limit = _int_param(request.query_params.get("limit"), "query.limit", 20, 1, MAX_LIST_LIMIT)
    before = _decode_cursor(request.query_params.get("cursor"))

    records = await service.list_jobs(status, limit, before, _caller(request))

    next_cursor = (
        _encode_cursor(records[-1].created_at, records[-1].id) if len(records) == limit else None
    )
    return _json({"jobs": [job_summary(r) for r in records], "next_cursor": next_cursor})


async def job_event_stream(request: Request) -> Response:
    service = _service(request)
    job_id = request.path_params["job_id"]
    last_id = _last_event_id(request)
    await service.require_job(job_id, _caller(request))  # 404 before the stream starts

    return EventSourceResponse(
        job_events(service.storage, service.hub, job_id, last_id),
        ping=service.settings.sse_ping_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def openapi(request: Request) -> Response:
    document = request.app.state.openapi
    if document is None:
        document = request.app.state.openapi = orjson.dumps(openapi_document())
    return Response(document, media_type="application/json")


async def health(request: Request) -> Response:
    service = _service(request)
    return _json(
        {
            "status": "ok",
            "model": service.model.name,
            "search": service.search.name,
            "active_runs": service.runner.active_runs,
            "queued_runs": service.runner.queued_runs,
            "subscribers": service.hub.subscriber_count,
        }
    )


def _last_event_id(request: Request) -> int:
    header = request.headers.get("last-event-id")
    if header is not None and header.strip():
        return _int_param(header.strip(), "header.Last-Event-ID", 0, 0, MAX_EVENT_ID)
    query = request.query_params.get("last_event_id")
    return _int_param(query, "query.last_event_id", 0, 0, MAX_EVENT_ID)


def _int_param(raw: str | None, field: str, default: int, low: int, high: int) -> int:
    """Parse a whole number from a query parameter or header; absent means `default`."""
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise InvalidRequest(
            f"Invalid {field}: {raw[:40]!r}.",
            [FieldError(field, f"Use a whole number from {low} to {high}.")],
        )
    return int(raw)


def _encode_cursor(created_at: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at, job_id])).decode().rstrip("=")


def _decode_cursor(raw: str | None) -> tuple[float, str] | None:
    if not raw:
        return None
    try:
        created_at, job_id = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return float(created_at), str(job_id)
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidRequest(
            "Invalid cursor.",
            [FieldError("query.cursor", "Pass next_cursor from the previous page unchanged.")],
        ) from None
