"""The service's operations on jobs, shared by the HTTP routes and the lifespan."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace

import orjson
from langgraph.types import Command

from app import transitions
from app.auth import SubmissionLimiter, TooManyRequests
from app.config import Settings
from app.errors import FieldError, IdempotencyMismatch, InvalidRequest, JobNotFound
from app.hub import Hub
from app.jobs import JobRecord
from app.providers import describe, make_guardrails, make_model, make_search, search_policy
from app.runner import CANCELLED_ERROR, REJECTED_ERROR, JobRunner, status_events
from app.schemas import ApprovalRequest, ResearchRequest
from app.storage import NewJob, SqliteStorage
from app.views import RunContent, job_view
from graph.builder import build_graph
from graph.providers.base import ResearchModel, SearchProvider

logger = logging.getLogger(__name__)

VIEW_CACHE_SIZE = 10_000
MAX_IDEMPOTENCY_KEY_CHARS = 200


@dataclass(frozen=True, slots=True)
class CachedView:
    version: int
    terminal: bool
    owner: str
    body: bytes


class Service:
    """Owns storage, the compiled graph, the event hub and the runner of one process."""

    def __init__(
        self,
        settings: Settings,
        model: ResearchModel | None = None,
        search: SearchProvider | None = None,
    ) -> None:
        self.settings = settings
        self.model = model or make_model(settings)
        self.search = search or make_search(settings)
        self.guardrails = make_guardrails(self.model, settings)
        self._guardrails_warm_up: asyncio.Task[None] | None = None
        self.storage = SqliteStorage(settings.data_dir)
        self.hub = Hub(self.storage, settings.sse_window, settings.event_poll_s)
        self.runner: JobRunner
        self._views: OrderedDict[str, CachedView] = OrderedDict()
        self._submissions = SubmissionLimiter(settings.submit_rate_per_min)
        self._exit_stack = AsyncExitStack()

    async def start(self) -> None:
        """Open storage and the checkpointer, compile the graph and resume unfinished jobs."""
        await self.storage.open()
        checkpointer = await self._exit_stack.enter_async_context(self.storage.checkpointer())
        if hasattr(self.search, "open"):
            await self.search.open()
            self._exit_stack.push_async_callback(self.search.close)
        graph = build_graph(
            self.model,
            self.search,
            checkpointer,
            search_policy(self.settings),
            self.settings.call_timeout_s,
            self.guardrails,
        )
        self.runner = JobRunner(self.storage, graph, self.hub, self.settings)
        logger.info(
            "service started: %s; guardrails %s; lease owner %s",
            describe(self.model, self.search, self.settings),
            "on" if self.guardrails is not None else "off",
            self.runner.owner,
        )
        if self.guardrails is not None:
            # Built in the background: the import takes seconds, and startup need not wait.
            self._guardrails_warm_up = asyncio.create_task(
                self.guardrails.warm_up(), name="guardrails-warm-up"
            )
            self._guardrails_warm_up.add_done_callback(_log_warm_up_failure)
        await self.runner.begin()

    def begin_shutdown(self) -> None:
        """Stop taking work and end open event streams, so shutdown need not wait for them."""
        self.runner.begin_drain()
        self.hub.close()

    async def stop(self) -> None:
        """Let runs finish within the shutdown grace time, release leases and close storage."""
        self.begin_shutdown()
        if self._guardrails_warm_up is not None:
            self._guardrails_warm_up.cancel()
        await self.runner.stop(self.settings.shutdown_grace_s)
        await self._exit_stack.aclose()
        await self.storage.close()
        logger.info("service stopped")

    async def submit(
        self, request: ResearchRequest, idempotency_key: str | None, caller: str = ""
    ) -> tuple[JobRecord, bool]:
        """Create a job and start planning it; a repeated idempotency key returns the first job.

        `caller` is the id of the API key (empty when auth is off); idempotency keys and
        job visibility are scoped to it.
        """
        self._check_question(request.question)
        key = _check_idempotency_key(idempotency_key)
        request_hash = hashlib.sha256(
            orjson.dumps(request.model_dump(), option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        if key is not None:
            # A retry of a stored submission returns its job without counting against the
            # per-key limits, because the job exists already.
            existing = await self.storage.get_job_by_idempotency_key(caller, key)
            if existing is not None:
                return self._replay(existing, key, request_hash), False
        if caller:
            await self._check_limits(caller)
        job = NewJob(
            id=str(uuid.uuid4()),
            question=request.question,
            owner=caller,
            idempotency_key=key,
            request_hash=request_hash if key else None,
            model=self.model.name,
            search=self.search.name,
            created_at=time.time(),
        )

        record, created = await self.storage.create_job(job, status_events(RunContent()))
        if not created:
            # Another request with the same key created the job after the lookup above.
            return self._replay(record, key, request_hash), False

        logger.info("job=%s created model=%s search=%s", record.id, record.model, record.search)
        self.runner.start(record.id, {"question": record.question}, RunContent())
        return record, True

    def _replay(self, record: JobRecord, key: str | None, request_hash: str) -> JobRecord:
        """Return the job stored for an idempotency key, or raise if the body differs."""
        if record.request_hash != request_hash:
            raise IdempotencyMismatch(
                f"Idempotency-Key {key!r} was first used with a different body.",
                [FieldError("header.Idempotency-Key", "Use a new key for a different request.")],
            )
        logger.info("job=%s returned again for idempotency key", record.id)
        return record

    async def approve(self, job_id: str, request: ApprovalRequest, caller: str = "") -> bytes:
        """Apply a person's decision: run the (possibly edited) plan, or end the job."""
        await self.require_job(job_id, caller)
        decision = request.resume_value()
        # A copy: the loaded content may be a running job's live content, which a rejected
        # approval must leave untouched.
        content = replace(await self.runner.load_content(job_id))
        if request.edited_plan is not None:
            content.plan, content.plan_edited = decision["edited_plan"], True  # type: ignore[assignment]

        if request.approved:
            record, events = await transitions.transition(
                self.storage,
                job_id,
                "running",
                status_events(content),
                expected=["awaiting_approval"],
                action="be approved",
                fields={"decision": decision},
            )
            self.hub.publish(job_id, events)
            self.runner.start(job_id, Command(resume=decision), content)
        else:
            record, events = await transitions.transition(
                self.storage,
                job_id,
                "failed",
                status_events(content, ("error", {"error": REJECTED_ERROR})),
                expected=["awaiting_approval"],
                action="be rejected",
                fields={"decision": decision, "error": REJECTED_ERROR},
            )
            self.hub.publish(job_id, events)
            await self.runner.record_rejection(job_id, decision)
        return orjson.dumps(job_view(record, content))

    async def cancel(self, job_id: str, caller: str = "") -> bytes:
        """End an unfinished job as `failed` with error "cancelled", wherever its run is.

        The change clears the job's lease, so a run in another process fails its next write
        and stops there.
        """
        await self.require_job(job_id, caller)
        content = await self.runner.load_content(job_id)
        record, events = await transitions.transition(
            self.storage,
            job_id,
            "failed",
            status_events(content, ("error", {"error": CANCELLED_ERROR})),
            expected=["pending", "awaiting_approval", "running"],
            action="be cancelled",
            fields={"error": CANCELLED_ERROR, "lease_owner": None},
        )
        self.hub.publish(job_id, events)
        self.runner.cancel(job_id)
        return orjson.dumps(job_view(record, content))

    async def view(self, job_id: str, caller: str = "") -> bytes:
        """Return the job view as JSON; finished jobs never change, so theirs is cached."""
        cached = self._views.get(job_id)
        if cached is not None and cached.terminal and cached.owner == caller:
            return cached.body

        record = await self.require_job(job_id, caller)
        if cached is not None and cached.version == record.version:
            return cached.body

        live = self.runner.live_content(job_id)
        content = live or await self.runner.load_content(job_id)
        body = orjson.dumps(job_view(record, content))
        if live is None and record.status != "running" and record.status != "pending":
            self._cache_view(
                job_id, CachedView(record.version, record.terminal, record.owner, body)
            )
        return body

    async def list_jobs(
        self, status: str | None, limit: int, before: tuple[float, str] | None, caller: str = ""
    ) -> list[JobRecord]:
        return await self.storage.list_jobs(caller, status, limit, before)

    async def require_job(self, job_id: str, caller: str = "") -> JobRecord:
        """Return the job, or raise JobNotFound when it does not exist or belongs to another key."""
        record = await self.storage.get_job(job_id)
        if record is None or record.owner != caller:
            raise JobNotFound(job_id)
        return record

    async def _check_limits(self, caller: str) -> None:
        unfinished = await self.storage.count_unfinished(caller)
        limit = self.settings.max_unfinished_per_key
        if unfinished >= limit:
            raise TooManyRequests(
                f"This API key has {unfinished} unfinished jobs; the limit is {limit}.",
                5.0,
                FieldError("header.Authorization", "Wait for a job to finish, or cancel one."),
            )
        self._submissions.check(caller)

    def _check_question(self, question: str) -> None:
        limit = self.settings.max_question_chars
        if len(question) > limit:
            raise InvalidRequest(
                f"The question has {len(question)} characters; the limit is {limit}.",
                [
                    FieldError(
                        "body.question", f"Shorten the question to at most {limit} characters."
                    )
                ],
            )

    def _cache_view(self, job_id: str, view: CachedView) -> None:
        self._views[job_id] = view
        self._views.move_to_end(job_id)
        if len(self._views) > VIEW_CACHE_SIZE:
            self._views.popitem(last=False)


def _log_warm_up_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "guardrails could not be built; jobs fail until they can: %s", task.exception()
        )


def _check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise InvalidRequest(
            "The Idempotency-Key header is invalid.",
            [
                FieldError(
                    "header.Idempotency-Key",
                    f"Use 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters.",
                )
            ],
        )
    return key
