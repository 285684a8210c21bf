"""The job state machine: the one place that decides which status changes are legal.

    pending -> awaiting_approval -> running -> done | partial | failed

Any unfinished job may also move to `failed` (planning error, rejection, cancellation).
Every change is a compare-and-set in the database, so of two racing changes one wins
and the other gets IllegalTransition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from app.errors import IllegalTransition
from app.jobs import JobRecord, JobStatus, StoredEvent
from app.storage import JobConflict, Storage
from app.storage.base import EventsFor

logger = logging.getLogger(__name__)

LEGAL: dict[str, frozenset[str]] = {
    "pending": frozenset({"awaiting_approval", "failed"}),
    "awaiting_approval": frozenset({"running", "failed"}),
    "running": frozenset({"done", "partial", "failed"}),
}

TIME_FIELD = {
    "awaiting_approval": "planned_at",
    "running": "approved_at",
    "done": "finished_at",
    "partial": "finished_at",
    "failed": "finished_at",
}


def predecessors(target: JobStatus) -> frozenset[str]:
    """Return the statuses from which `target` may be reached."""
    return frozenset(status for status, targets in LEGAL.items() if target in targets)


async def transition(
    storage: Storage,
    job_id: str,
    target: JobStatus,
    events_for: EventsFor,
    *,
    expected: Iterable[str] | None = None,
    action: str = "change status",
    fields: dict[str, Any] | None = None,
    owner: str | None = None,
) -> tuple[JobRecord, list[StoredEvent]]:
    """Move a job to `target` and store `events_for(record)` with the change, atomically.

    `expected` narrows the legal predecessors (approval accepts only `awaiting_approval`).
    `owner` makes the change conditional on holding the job's lease. Raises
    IllegalTransition when the job is in any other status.
    """
    allowed = predecessors(target)
    if expected is not None:
        narrowed = frozenset(expected)
        assert narrowed <= allowed, f"{narrowed} -> {target} is not in the state machine"
        allowed = narrowed

    now = time.time()
    changes = {"updated_at": now, TIME_FIELD[target]: now, **(fields or {})}
    try:
        record, events, previous = await storage.compare_and_set(
            job_id, allowed, target, changes, events_for, owner
        )
    except JobConflict as exc:
        logger.info(
            "job=%s transition rejected: %s -> %s (wanted one of %s)",
            job_id,
            exc.status,
            target,
            ", ".join(sorted(allowed)),
        )
        raise IllegalTransition(job_id, exc.status, action) from exc

    logger.info(
        "job=%s status=%s->%s elapsed_ms=%.0f",
        job_id,
        previous,
        target,
        (record.updated_at - record.created_at) * 1000,
    )
    return record, events
