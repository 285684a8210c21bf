"""Runs jobs' graph threads in asyncio tasks and turns their stream into stored events.

A run is one `graph.astream` call on the job's thread: the planning run ends at the
approval interrupt, and the research run resumes it with the person's decision. At
most `max_concurrent_jobs` runs execute at once; the others wait for a slot.

A run first claims the job's lease, renews it while it runs and gives it up at the
end, so several processes on one database never run the same job at once. Jobs whose
lease expired because their process died are taken over by the lease loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

import orjson
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from app.config import Settings
from app.errors import IllegalTransition
from app.hub import Hub
from app.jobs import JobRecord
from app.recorder import EventRecorder
from app.storage import LeaseLost, Storage
from app.views import RunContent, job_view, source_summary
from graph.guardrails.rails import GuardrailError
from graph.providers.base import ProviderError

logger = logging.getLogger(__name__)

STREAM_MODES = ["updates", "custom"]
REJECTED_ERROR = "The plan was rejected at review, so nothing was researched."
CANCELLED_ERROR = "cancelled"
RECOVER = object()
"""Run input meaning: read the thread's state after claiming the job and continue from it."""


def thread_config(job_id: str) -> dict[str, Any]:
    """Return the LangGraph config of a job: its thread id is its job id."""
    return {"configurable": {"thread_id": job_id}}


def status_events(content: RunContent, *extra: tuple[str, Any]):  # type: ignore[no-untyped-def]
    """Build the events of a status change: `extra` first, then the new job view."""

    def events_for(record: JobRecord) -> list[tuple[str, bytes]]:
        drafts = [(name, orjson.dumps(data)) for name, data in extra]
        drafts.append(("status", orjson.dumps(job_view(record, content))))
        if record.terminal:
            drafts.append(("end", orjson.dumps({"status": record.status})))
        return drafts

    return events_for


class JobRunner:
    """Owns this process's run tasks, their leases and the live content of the jobs they run."""

    def __init__(
        self, storage: Storage, graph: CompiledStateGraph, hub: Hub, settings: Settings
    ) -> None:
        self.storage = storage
        self.graph = graph
        self.hub = hub
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._claimed: set[str] = set()
        self._cancelled: set[str] = set()
        self._live: dict[str, RunContent] = {}
        self._draining = False
        self._lease_loop: asyncio.Task[None] | None = None

    @property
    def active_runs(self) -> int:
        return len(self._claimed)

    @property
    def queued_runs(self) -> int:
        return len(self._tasks) - len(self._claimed)

    def live_content(self, job_id: str) -> RunContent | None:
        """Return the content of a job running here; it is newer than its last checkpoint."""
        return self._live.get(job_id)

    async def load_content(self, job_id: str) -> RunContent:
        """Return a job's live content, or read it from its latest checkpoint."""
        live = self._live.get(job_id)
        if live is not None:
            return live
        state = await self.graph.aget_state(thread_config(job_id))
        return RunContent.from_values(state.values or {})

    async def begin(self) -> None:
        """Resume orphaned jobs now, then keep leases fresh and look for orphans periodically."""
        await self._adopt_orphans()
        self._lease_loop = asyncio.create_task(self._maintain_leases(), name="lease-loop")

    def start(
        self, job_id: str, run_input: Any = RECOVER, content: RunContent | None = None
    ) -> None:
        """Start a run in a task; `run_input` is a question, a Command, None, or RECOVER."""
        if self._draining:
            logger.info("job=%s not started: the server is shutting down", job_id)
            return
        if job_id in self._tasks:
            logger.debug("job=%s already has a run in this process", job_id)
            return
        task = asyncio.create_task(self._run(job_id, run_input, content), name=f"run-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    def cancel(self, job_id: str) -> None:
        """Stop a local run of a job that was just cancelled; its status is already final."""
        task = self._tasks.get(job_id)
        if task is not None:
            self._cancelled.add(job_id)
            task.cancel()

    async def record_rejection(self, job_id: str, decision: dict[str, Any]) -> None:
        """Resume the thread with a rejection so its checkpoint records the decision."""
        await self.graph.ainvoke(Command(resume=decision), thread_config(job_id))

    def begin_drain(self) -> None:
        """Stop taking new work; runs in flight continue until `stop`."""
        self._draining = True

    async def stop(self, grace_s: float) -> None:
        """Give runs `grace_s` seconds to finish, cancel the rest and release their leases.

        A cancelled run resumes from its last checkpoint on the next start, so at most
        the step it was in is executed again.
        """
        self._draining = True
        tasks = list(self._tasks.values())
        if tasks:
            logger.info("waiting up to %.1f s for %d runs", grace_s, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._lease_loop is not None:
            self._lease_loop.cancel()
            await asyncio.gather(self._lease_loop, return_exceptions=True)

    async def _run(self, job_id: str, run_input: Any, content: RunContent | None) -> None:
        async with self._slots:
            if self._draining or not await self.storage.claim(
                job_id, self.owner, self.settings.lease_ttl_s
            ):
                logger.debug("job=%s is leased elsewhere or finished; not running it", job_id)
                return
            self._claimed.add(job_id)
            try:
                with self.hub.publishing(job_id):
                    await self._run_claimed(job_id, run_input, content)
            finally:
                self._claimed.discard(job_id)
                self._cancelled.discard(job_id)
                self._live.pop(job_id, None)
                await asyncio.shield(self.storage.release([job_id], self.owner))

    async def _run_claimed(self, job_id: str, run_input: Any, content: RunContent | None) -> None:
        recorder = EventRecorder(job_id, self.storage, self.hub, self.owner)
        content = content or await self.load_content(job_id)
        self._live[job_id] = content
        deadline: asyncio.Timeout | None = None
        try:
            if run_input is RECOVER:
                run_input, content = await self._recovery_input(job_id, recorder)
                self._live[job_id] = content
                if run_input is RECOVER:
                    return
            async with asyncio.timeout(self.settings.job_timeout_s) as deadline:
                await self._execute(job_id, run_input, content, recorder)
        except asyncio.CancelledError:
            if job_id in self._cancelled:
                logger.info("job=%s run stopped: the job was cancelled", job_id)
                return
            logger.info("job=%s run interrupted; it resumes from its last checkpoint", job_id)
            raise
        except LeaseLost:
            logger.warning("job=%s lost its lease to another process; run stopped", job_id)
        except TimeoutError:
            if deadline is not None and deadline.expired():
                limit = self.settings.job_timeout_s
                logger.warning("job=%s timed out after %.0f s", job_id, limit)
                error = f"The job did not finish within {limit:.0f} s."
            else:
                # A model or search call ran out of its own time limit, not the job.
                limit = self.settings.call_timeout_s
                logger.warning("job=%s run failed: a provider call timed out", job_id)
                error = f"A model or search call timed out (SCOUT_CALL_TIMEOUT_S is {limit:g} s)."
            await self._give_up(recorder, content, error)
        except (GuardrailError, ProviderError) as exc:
            # Expected outcomes with a message written for the user: no traceback needed.
            logger.warning("job=%s stopped: %s", job_id, exc)
            await self._give_up(recorder, content, str(exc))
        except Exception as exc:
            logger.exception("job=%s run failed", job_id)
            await self._give_up(
                recorder,
                content,
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            )
        finally:
            await recorder.close()

    async def _recovery_input(self, job_id: str, recorder: EventRecorder) -> tuple[Any, RunContent]:
        """Decide how to continue a job found unfinished; RECOVER means nothing is left to run."""
        record = await self.storage.get_job(job_id)
        state = await self.graph.aget_state(thread_config(job_id))
        content = RunContent.from_values(state.values or {})
        if record is None or record.terminal:
            return RECOVER, content
        logger.info("job=%s recovering from status=%s next=%s", job_id, record.status, state.next)

        if record.status == "pending" and state.interrupts:
            await self._await_approval(recorder, content)
            return RECOVER, content
        if "write" in state.next:
            recorder.restart_report()
        if record.status == "pending":
            return (None if state.values else {"question": record.question}), content
        if state.interrupts:
            return Command(resume=record.decision), content
        return None, content

    async def _execute(
        self, job_id: str, run_input: Any, content: RunContent, recorder: EventRecorder
    ) -> None:
        started = time.perf_counter()
        interrupted = False

        stream = self.graph.astream(
            run_input, thread_config(job_id), stream_mode=STREAM_MODES, durability="sync"
        )
        async for mode, chunk in stream:
            if mode == "custom":
                recorder.token(chunk["token"])
            else:
                interrupted = await self._apply_update(chunk, content, recorder) or interrupted

        logger.info(
            "job=%s run finished: interrupted=%s run_ms=%.0f",
            job_id,
            interrupted,
            (time.perf_counter() - started) * 1000,
        )
        if interrupted:
            await self._await_approval(recorder, content)
        elif content.report is not None:
            await self._complete(recorder, content)
        else:
            # A rejected plan ends the graph with no report; the approval route already
            # moved such a job to `failed`.
            record = await self.storage.get_job(job_id)
            if record is not None and not record.terminal:
                raise RuntimeError("The run ended without a report.")

    async def _apply_update(
        self, chunk: dict[str, Any], content: RunContent, recorder: EventRecorder
    ) -> bool:
        """Record the events of one node's update; return True for the approval interrupt."""
        interrupted = False
        for node, update in chunk.items():
            if node == "__interrupt__":
                interrupted = True
            elif not update:
                continue
            elif node == "plan":
                await recorder.record([("plan", {"plan": update["plan"], "edited": False})])
                content.plan = update["plan"]
            elif node == "approve" and update.get("plan_edited"):
                await recorder.record([("plan", {"plan": update["plan"], "edited": True})])
                content.plan, content.plan_edited = update["plan"], True
            elif node == "research" and (update.get("sources") or update.get("dropped_sources")):
                sources = update.get("sources") or []
                dropped = update.get("dropped_sources") or []
                events = [("source", source_summary(s)) for s in sources]
                events += [("source_dropped", d) for d in dropped]
                await recorder.record(events)
                content.sources.extend(sources)
                content.dropped_sources.extend(dropped)
            elif node == "write":
                content.report = update["report"]
                content.citations = update["citations"]
        return interrupted

    async def _await_approval(self, recorder: EventRecorder, content: RunContent) -> None:
        await recorder.transition(
            "awaiting_approval",
            status_events(content),
            expected=["pending"],
            action="await approval",
            fields={"lease_owner": None},
        )

    async def _complete(self, recorder: EventRecorder, content: RunContent) -> None:
        report = {
            "report": content.report,
            "sources": [source_summary(s) for s in content.sources],
            "citations": content.citations,
        }
        await recorder.transition(
            "done",
            status_events(content, ("report", report)),
            action="complete",
            fields={"lease_owner": None},
        )

    async def _give_up(self, recorder: EventRecorder, content: RunContent, error: str) -> None:
        """End a job that cannot finish: `partial` when it gathered sources, else `failed`."""
        try:
            await recorder.drain()
        except Exception:
            logger.warning("job=%s could not store queued tokens before giving up", recorder.job_id)

        record = await self.storage.get_job(recorder.job_id)
        fields = {"error": error, "lease_owner": None}
        try:
            if record is not None and record.status == "running" and content.sources:
                content.report = recorder.report_text
                partial = {
                    "report": content.report,
                    "sources": [source_summary(s) for s in content.sources],
                    "citations": [],
                    "partial": True,
                }
                await recorder.transition(
                    "partial",
                    status_events(content, ("report", partial), ("error", {"error": error})),
                    action="end partially",
                    fields=fields,
                )
                await self._store_partial_report(recorder.job_id, content.report)
            else:
                await recorder.transition(
                    "failed",
                    status_events(content, ("error", {"error": error})),
                    action="fail",
                    fields=fields,
                )
        except (IllegalTransition, LeaseLost) as exc:
            logger.warning("job=%s was not marked failed: %s", recorder.job_id, exc)

    async def _store_partial_report(self, job_id: str, report: str) -> None:
        """Write the report text so far into the job's thread, where GET /status reads it.

        Until the run ends, the view comes from the run's live content. After that it comes
        from the checkpoint and is cached, so this must finish before the run ends.
        """
        try:
            await self.graph.aupdate_state(
                thread_config(job_id), {"report": report, "citations": []}, as_node="write"
            )
        except Exception:
            logger.warning("job=%s could not store its partial report", job_id, exc_info=True)

    async def _maintain_leases(self) -> None:
        """Renew this process's leases and adopt orphaned jobs, every third of the lease time."""
        interval = self.settings.lease_ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew_leases()
                if not self._draining:
                    await self._adopt_orphans()
            except Exception:
                logger.exception("lease maintenance failed; retrying in %.1f s", interval)

    async def _renew_leases(self) -> None:
        leased = list(self._claimed)
        renewed = await self.storage.renew(leased, self.owner, self.settings.lease_ttl_s)
        for job_id in set(leased) - renewed:
            task = self._tasks.get(job_id)
            record = await self.storage.get_job(job_id)
            if task is not None and record is not None and record.status in ("pending", "running"):
                logger.warning("job=%s lease was taken over; stopping the local run", job_id)
                task.cancel()

    async def _adopt_orphans(self) -> None:
        capacity = self.settings.max_concurrent_jobs * 2
        for record in await self.storage.orphaned_jobs(capacity):
            if record.id not in self._tasks:
                logger.info(
                    "job=%s found %s with no live lease; resuming it", record.id, record.status
                )
                self.start(record.id)
