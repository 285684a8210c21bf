"""The job view: what GET /status returns and what every `status` event carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.jobs import JobRecord
from graph.providers.offline import OFFLINE_NOTICE
from graph.state import DroppedSource, Source

EXCERPT_CHARS = 280


@dataclass(slots=True)
class RunContent:
    """The parts of a job's view that live in its graph thread."""

    plan: dict[str, Any] | None = None
    plan_edited: bool = False
    sources: list[Source] = field(default_factory=list)
    report: str | None = None
    citations: list[int] = field(default_factory=list)
    dropped_sources: list[DroppedSource] = field(default_factory=list)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RunContent:
        """Build content from a checkpoint's state values."""
        return cls(
            plan=values.get("plan"),
            plan_edited=bool(values.get("plan_edited")),
            sources=list(values.get("sources") or []),
            report=values.get("report"),
            citations=list(values.get("citations") or []),
            dropped_sources=list(values.get("dropped_sources") or []),
        )


def source_summary(source: Source) -> dict[str, Any]:
    """Describe a source without its full text: the view and the events carry an excerpt."""
    content = " ".join(source["content"].split())
    excerpt = content if len(content) <= EXCERPT_CHARS else content[: EXCERPT_CHARS - 1] + "…"
    return {
        "id": source["id"],
        "url": source["url"],
        "title": source["title"],
        "query": source["query"],
        "excerpt": excerpt,
    }


def job_view(record: JobRecord, content: RunContent) -> dict[str, Any]:
    """Render a job for clients; the report appears once the job is done or partial."""
    show_report = record.status in ("done", "partial")
    return {
        "job_id": record.id,
        "status": record.status,
        "question": record.question,
        "model": record.model,
        "search": record.search,
        "notice": OFFLINE_NOTICE if record.model == "offline" else None,
        "plan": content.plan,
        "plan_edited": content.plan_edited,
        "sources": [source_summary(source) for source in content.sources],
        "dropped_sources": content.dropped_sources,
        "report": content.report if show_report else None,
        "citations": content.citations if show_report else [],
        "error": record.error,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "timings": timings(record),
        "links": {
            "self": f"/status/{record.id}",
            "events": f"/research/{record.id}/events",
            "approve": f"/research/{record.id}/approve",
        },
    }


def job_summary(record: JobRecord) -> dict[str, Any]:
    """Render a job for lists: its registry fields only, with no checkpoint read."""
    return {
        "job_id": record.id,
        "status": record.status,
        "question": record.question,
        "model": record.model,
        "error": record.error,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "links": {"self": f"/status/{record.id}"},
    }


def timings(record: JobRecord) -> dict[str, float | None]:
    """Seconds spent in each phase; a phase not reached yet is None."""

    def span(start: float | None, end: float | None) -> float | None:
        return round(end - start, 3) if start is not None and end is not None else None

    return {
        "planning_s": span(record.created_at, record.planned_at),
        "awaiting_approval_s": span(record.planned_at, record.approved_at),
        "research_s": span(record.approved_at, record.finished_at),
        "total_s": span(record.created_at, record.finished_at),
    }
