"""The storage interface of the service; SQLite implements it today."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from langgraph.checkpoint.base import BaseCheckpointSaver

from app.jobs import JobRecord, StoredEvent

EventDraft = tuple[str, bytes]
"""An event name and its JSON data, before the store gives it an id."""

EventsFor = Callable[[JobRecord], Sequence[EventDraft]]
"""Builds the events to store with a change, from the job record as changed."""


@dataclass(frozen=True, slots=True)
class NewJob:
    """The fields of a job at creation."""

    id: str
    question: str
    owner: str
    idempotency_key: str | None
    request_hash: str | None
    model: str
    search: str
    created_at: float


class JobConflict(Exception):
    """A compare-and-set found the job in another status than the change expects."""

    def __init__(self, job_id: str, status: str | None) -> None:
        super().__init__(f"job {job_id!r} is {status!r}")
        self.job_id = job_id
        self.status = status


class LeaseLost(Exception):
    """This process no longer holds the job's lease, so it must stop writing for the job."""

    def __init__(self, job_id: str, owner: str) -> None:
        super().__init__(f"job {job_id!r} is no longer leased by {owner!r}")
        self.job_id = job_id
        self.owner = owner


class Storage(Protocol):
    """Jobs, their event log and the LangGraph checkpointer, behind one narrow interface."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def checkpointer(self) -> AbstractAsyncContextManager[BaseCheckpointSaver]: ...

    async def create_job(self, job: NewJob, events_for: EventsFor) -> tuple[JobRecord, bool]: ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def get_job_by_idempotency_key(self, owner: str, key: str) -> JobRecord | None: ...

    async def list_jobs(
        self, owner: str, status: str | None, limit: int, before: tuple[float, str] | None
    ) -> list[JobRecord]: ...

    async def count_unfinished(self, owner: str) -> int: ...

    async def compare_and_set(
        self,
        job_id: str,
        expected: Iterable[str],
        status: str,
        fields: dict[str, Any],
        events_for: EventsFor,
        owner: str | None = None,
    ) -> tuple[JobRecord, list[StoredEvent], str]: ...

    async def append_events(
        self,
        job_id: str,
        events: Sequence[EventDraft],
        bump_version: bool,
        owner: str | None = None,
    ) -> list[StoredEvent]: ...

    async def claim(self, job_id: str, owner: str, ttl_s: float) -> bool: ...

    async def renew(self, job_ids: Sequence[str], owner: str, ttl_s: float) -> set[str]: ...

    async def release(self, job_ids: Sequence[str], owner: str) -> None: ...

    async def orphaned_jobs(self, limit: int) -> list[JobRecord]: ...

    async def read_events(self, job_id: str, after_id: int, limit: int) -> list[StoredEvent]: ...
