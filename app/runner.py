"""Runs jobs' graph threads in asyncio tasks and turns their stream into stored events.

A run is one `graph.astream` call on the job's thread: the planning run ends at the
approval interrupt, and the research run resumes it with the person's decision. At most
`max_concurrent` runs execute at once; the others wait for a slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from app.errors import IllegalTransition
from app.hub import Hub
from app.jobs import JobRecord
from app.recorder import EventRecorder
from app.storage import Storage
from app.views import RunContent, job_view, source_summary

logger = logging.getLogger(__name__)

STREAM_MODES = ["updates", "custom"]
REJECTED_ERROR = "The plan was rejected at review, so nothing was researched."


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
    """Owns this process's run tasks and the live content of the jobs they run."""

    def __init__(
        self, storage: Storage, graph: CompiledStateGraph, hub: Hub, max_concurrent: int
    ) -> None:
        self.storage = storage
        self.graph = graph
        self.hub = hub
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._live: dict[str, RunContent] = {}

    @property
    def active_runs(self) -> int:
        return len(self._tasks)

    def live_content(self, job_id: str) -> RunContent | None:
        """Return the content of a job running here; it is newer than its last checkpoint."""
        return self._live.get(job_id)

    async def load_content(self, job_id: str) -> RunContent:
        """Read a job's content from its latest checkpoint."""
        live = self._live.get(job_id)
        if live is not None:
            return live
        state = await self.graph.aget_state(thread_config(job_id))
        return RunContent.from_values(state.values or {})

    def start(self, job_id: str, run_input: Any, content: RunContent | None = None) -> None:
        """Start a run of the job's thread in a task; `run_input` is a question, a Command or None."""
        if job_id in self._tasks:
            logger.warning("job=%s already has a run in this process; not starting another", job_id)
            return
        task = asyncio.create_task(self._run(job_id, run_input, content), name=f"run-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def record_rejection(self, job_id: str, decision: dict[str, Any]) -> None:
        """Resume the thread with a rejection so its checkpoint records the decision."""
        await self.graph.ainvoke(Command(resume=decision), thread_config(job_id))

    async def recover(self) -> None:
        """Resume the jobs a previous process left `pending` or `running`."""
        for record in await self.storage.jobs_with_status(["pending", "running"]):
            state = await self.graph.aget_state(thread_config(record.id))
            content = RunContent.from_values(state.values or {})
            waiting = bool(state.interrupts)

            if record.status == "pending" and waiting:
                await self._await_approval(EventRecorder(record.id, self.storage, self.hub), content)
                continue
            if record.status == "pending":
                run_input = None if state.values else {"question": record.question}
            else:
                run_input = Command(resume=record.decision) if waiting else None
            logger.info("job=%s recovering from status=%s", record.id, record.status)
            self.start(record.id, run_input, content)

    async def stop(self) -> None:
        """Cancel every run of this process; their jobs resume from checkpoints on the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job_id: str, run_input: Any, content: RunContent | None) -> None:
        async with self._slots:
            with self.hub.publishing(job_id):
                recorder = EventRecorder(job_id, self.storage, self.hub)
                if content is None:
                    content = await self.load_content(job_id)
                self._live[job_id] = content
                try:
                    await self._execute(job_id, run_input, content, recorder)
                except asyncio.CancelledError:
                    logger.info("job=%s run cancelled; it resumes from its last checkpoint", job_id)
                    raise
                except Exception as exc:
                    logger.exception("job=%s run failed", job_id)
                    await self._fail(recorder, content, exc)
                finally:
                    await recorder.close()
                    self._live.pop(job_id, None)

    async def _execute(
        self, job_id: str, run_input: Any, content: RunContent, recorder: EventRecorder
    ) -> None:
        started = time.perf_counter()
        interrupted = False

        stream = self.graph.astream(run_input, thread_config(job_id), stream_mode=STREAM_MODES)
        async for mode, chunk in stream:
            if mode == "custom":
                recorder.token(chunk["token"])
            else:
                interrupted = await self._apply_update(chunk, content, recorder) or interrupted

        logger.info(
            "job=%s run finished: interrupted=%s run_ms=%.0f",
            job_id, interrupted, (time.perf_counter() - started) * 1000,
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
            elif node == "research" and update.get("sources"):
                sources = update["sources"]
                await recorder.record([("source", source_summary(s)) for s in sources])
                content.sources.extend(sources)
            elif node == "write":
                content.report = update["report"]
                content.citations = update["citations"]
        return interrupted

    async def _await_approval(self, recorder: EventRecorder, content: RunContent) -> None:
        await recorder.transition(
            "awaiting_approval", status_events(content), expected=["pending"], action="await approval"
        )

    async def _complete(self, recorder: EventRecorder, content: RunContent) -> None:
        report = {
            "report": content.report,
            "sources": [source_summary(s) for s in content.sources],
            "citations": content.citations,
        }
        await recorder.transition(
            "done", status_events(content, ("report", report)), action="complete"
        )

    async def _fail(self, recorder: EventRecorder, content: RunContent, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            await recorder.drain()
        except Exception:
            logger.warning("job=%s could not store queued tokens before failing", recorder.job_id)
        try:
            await recorder.transition(
                "failed", status_events(content, ("error", {"error": error})),
                action="fail", fields={"error": error},
            )
        except IllegalTransition:
            logger.warning("job=%s finished elsewhere before its failure was stored", recorder.job_id)
