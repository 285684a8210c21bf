"""Stores a run's events in order and publishes each batch once it is stored.

Report tokens are queued and written in batches by a background flush: while one batch
is being written, the next one collects, so storage never slows the writer node. Every
other event first waits for the queued tokens, which keeps the per-job order intact.
Every write requires this process's lease on the job, so a process that lost the job
to another cannot add events after the new owner's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from app import transitions
from app.hub import Hub
from app.jobs import JobRecord, JobStatus, StoredEvent
from app.storage import Storage
from app.storage.base import EventDraft, EventsFor


class EventRecorder:
    """The single writer of one job's events while a run of it is in this process."""

    def __init__(self, job_id: str, storage: Storage, hub: Hub, owner: str) -> None:
        self.job_id = job_id
        self.storage = storage
        self.hub = hub
        self.owner = owner
        self._tokens: list[EventDraft] = []
        self._text: list[str] = []
        self._restart = False
        self._flush: asyncio.Task[None] | None = None

    @property
    def report_text(self) -> str:
        """Return the report text streamed by this run so far."""
        return "".join(self._text)

    def restart_report(self) -> None:
        """Mark the next token as the start of a new report text.

        The writer node runs again from its start when a run resumes after a crash, so
        subscribers get `"reset": true` on its first token and discard the text before it.
        """
        self._restart = True

    def token(self, text: str) -> None:
        """Queue a report token; it is stored and published with the next batch."""
        data: dict[str, Any] = {"text": text}
        if self._restart:
            data["reset"] = True
            self._restart = False
            self._text.clear()
        self._text.append(text)
        self._tokens.append(("token", orjson.dumps(data)))
        if self._flush is None:
            self._flush = asyncio.create_task(self._flush_tokens(), name=f"flush-{self.job_id}")

    async def drain(self) -> None:
        """Wait until every queued token is stored and published."""
        if self._flush is not None:
            await asyncio.shield(self._flush)

    async def record(self, events: Sequence[tuple[str, Any]], changes_view: bool = True) -> None:
        """Store events after the queued tokens; `changes_view` marks a change to GET /status."""
        await self.drain()
        drafts = [(name, orjson.dumps(data)) for name, data in events]
        stored = await self.storage.append_events(self.job_id, drafts, changes_view, self.owner)
        self.hub.publish(self.job_id, stored)

    async def transition(
        self, target: JobStatus, events_for: EventsFor, **kwargs: Any
    ) -> tuple[JobRecord, list[StoredEvent]]:
        """Change the job's status after the queued tokens, publishing the change's events."""
        await self.drain()
        record, stored = await transitions.transition(
            self.storage, self.job_id, target, events_for, owner=self.owner, **kwargs
        )
        self.hub.publish(self.job_id, stored)
        return record, stored

    async def close(self) -> None:
        """Stop flushing; tokens not yet stored are dropped (the run failed or was cancelled)."""
        if self._flush is not None:
            self._flush.cancel()
            await asyncio.gather(self._flush, return_exceptions=True)
            self._flush = None
        self._tokens.clear()

    async def _flush_tokens(self) -> None:
        try:
            while self._tokens:
                batch, self._tokens = self._tokens, []
                stored = await self.storage.append_events(self.job_id, batch, False, self.owner)
                self.hub.publish(self.job_id, stored)
        finally:
            self._flush = None
