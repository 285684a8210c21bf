"""The OpenAPI document, built from the pydantic models that validate requests.

The response models here describe what the routes return. The request models are the
ones in app/schemas.py that the routes validate with, so the document cannot drift from them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.jobs import JOB_STATUSES
from app.schemas import ApprovalRequest, ResearchRequest
from graph.plan import ResearchPlan

JobStatusName = Literal["pending", "awaiting_approval", "running", "done", "partial", "failed"]
assert set(JobStatusName.__args__) == set(JOB_STATUSES)  # type: ignore[attr-defined]


class SourceSummary(BaseModel):
    """A gathered source as the view shows it."""

    id: int = Field(description="The number that `[n]` citations use.")
    url: str = Field(description="Web address, or `corpus/<path>#<section>` for local documents.")
    title: str
    query: str = Field(description="The plan query that found it.")
    excerpt: str = Field(description="The start of the text the report relies on.")


class DroppedSource(BaseModel):
    """A search result that the source rail kept from the writer."""

    url: str
    title: str
    reason: str = Field(description="Why the source rail dropped it.")


class Timings(BaseModel):
    """Seconds spent in each phase; null until the phase ends."""

    planning_s: float | None
    awaiting_approval_s: float | None
    research_s: float | None
    total_s: float | None


class JobLinks(BaseModel):
    self: str
    events: str
    approve: str


class JobView(BaseModel):
    """The job as GET /status returns it and as every `status` event carries it."""

    job_id: str
    status: JobStatusName
    question: str
    model: str = Field(
        description='The model that plans and writes; "offline" for the offline provider.'
    )
    search: str = Field(description='The search provider: "tavily" or "local".')
    notice: str | None = Field(description="Set when the offline provider writes the report.")
    plan: ResearchPlan | None
    plan_edited: bool
    sources: list[SourceSummary]
    dropped_sources: list[DroppedSource] = Field(
        description="Search results that the source rail dropped, in the order found."
    )
    report: str | None = Field(description="The report, once the job is done or partial.")
    citations: list[int] = Field(description="Source ids the report cites, in order.")
    error: str | None
    created_at: float = Field(description="Unix time in seconds.")
    updated_at: float = Field(description="Unix time in seconds.")
    timings: Timings
    links: JobLinks


class CreatedLinks(BaseModel):
    self: str


class JobCreated(BaseModel):
    """The 202 body of POST /research."""

    job_id: str
    status: JobStatusName
    links: CreatedLinks


class SummaryLinks(BaseModel):
    self: str


class JobSummary(BaseModel):
    job_id: str
    status: JobStatusName
    question: str
    model: str
    error: str | None
    created_at: float
    updated_at: float
    links: SummaryLinks


class JobList(BaseModel):
    """A page of jobs, newest first."""

    jobs: list[JobSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last."
    )


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    search: str
    active_runs: int
    queued_runs: int
    subscribers: int


class ProblemField(BaseModel):
    field: str = Field(
        description="Where the problem is: `body.question`, `header.Last-Event-ID`, ..."
    )
    message: str = Field(description="How to fix it.")


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[ProblemField]


MODELS: tuple[type[BaseModel], ...] = (
    ResearchRequest,
    ApprovalRequest,
    ResearchPlan,
    JobView,
    JobCreated,
    JobList,
    Health,
    Problem,
)
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
PROBLEM_STATUSES = {
    "401": "Missing or unknown API key (only when keys are configured).",
    "404": "No such job, or it belongs to another API key.",
    "409": "The job's status does not allow this.",
    "413": "The body is larger than the limit.",
    "415": "The body is not JSON.",
    "422": "The request is invalid; `errors` names each field.",
    "429": "Too many submissions or unfinished jobs for this API key.",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _responses(
    ok: str, model: type[BaseModel] | None, *problems: str, media: str = "application/json"
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": "Success"}}
    if model is not None:
        responses[ok]["content"] = {media: {"schema": _ref(model)}}
    for status in problems:
        responses[status] = {
            "description": PROBLEM_STATUSES[status],
            "content": {"application/problem+json": {"schema": _ref(Problem)}},
        }
    return responses


def openapi_document() -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of the service."""
    schemas: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    stream = {
        "description": (
            "Server-Sent Events: status, plan, source, source_dropped, token, report, error, "
            "end, reconnect."
        ),
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    paths = {
        "/research": {
            "post": {
                "summary": "Submit a question; planning starts at once.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[ -~]{1,200}$"},
                    },
                ],
                "requestBody": _json_body(ResearchRequest),
                "responses": _responses("202", JobCreated, "401", "413", "415", "422", "429"),
            },
            "get": {
                "summary": "List recent jobs, newest first.",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(JOB_STATUSES)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _responses("200", JobList, "401", "422"),
            },
        },
        "/status/{job_id}": {
            "get": {
                "summary": "Read a job: status, plan, sources, report, error.",
                "parameters": [JOB_ID],
                "responses": _responses("200", JobView, "401", "404"),
            }
        },
        "/research/{job_id}/approve": {
            "post": {
                "summary": "Approve (optionally with an edited plan) or reject the drafted plan.",
                "parameters": [JOB_ID],
                "requestBody": _json_body(ApprovalRequest),
                "responses": _responses("200", JobView, "401", "404", "409", "413", "415", "422"),
            }
        },
        "/research/{job_id}/cancel": {
            "post": {
                "summary": 'Stop an unfinished job; it ends failed with error "cancelled".',
                "parameters": [JOB_ID],
                "responses": _responses("200", JobView, "401", "404", "409"),
            }
        },
        "/research/{job_id}/events": {
            "get": {
                "summary": "Follow a job as Server-Sent Events, resumable with Last-Event-ID.",
                "parameters": [
                    JOB_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]{0,19}$"},
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {
                        "name": "access_token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {**_responses("200", None, "401", "404", "422"), "200": stream},
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness and counters; never calls a model.",
                "responses": _responses("200", Health),
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Scout",
            "version": "0.1.0",
            "description": "Research jobs with a human approval step.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
