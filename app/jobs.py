"""Job records and events as the storage layer returns them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

JobStatus = Literal["pending", "awaiting_approval", "running", "done", "partial", "failed"]
JOB_STATUSES: tuple[JobStatus, ...] = (
    "pending",
    "awaiting_approval",
    "running",
    "done",
    "partial",
    "failed",
)
TERMINAL_STATUSES: frozenset[str] = frozenset({"done", "partial", "failed"})

EventName = Literal[
    "status", "plan", "source", "source_dropped", "token", "report", "error", "end", "reconnect"
]


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One row of the job registry; run content (plan, sources, report) is in the checkpointer."""

    id: str
    status: JobStatus
    question: str
    error: str | None
    idempotency_key: str | None
    request_hash: str | None
    model: str
    search: str
    created_at: float
    updated_at: float
    planned_at: float | None
    approved_at: float | None
    finished_at: float | None
    decision: dict[str, Any] | None
    last_event_id: int
    version: int
    owner: str = ""  # the id of the API key that created the job; "" when auth is off

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event with its per-job id; `frame` is its Server-Sent Events encoding, built once."""

    job_id: str
    id: int
    event: str
    data: bytes
    frame: bytes

    @classmethod
    def make(cls, job_id: str, event_id: int, event: str, data: bytes) -> StoredEvent:
        # orjson never emits a newline, so the data fits on one `data:` line.
        frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode(), data)
        return cls(job_id, event_id, event, data, frame)

    def json(self) -> Any:
        return orjson.loads(self.data)
