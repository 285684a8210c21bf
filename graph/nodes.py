"""The graph's nodes: plan, approve, research (one step per super-step) and write."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langgraph.config import get_stream_writer
from langgraph.types import interrupt

from graph.plan import ResearchPlan
from graph.providers.base import ProviderError, ResearchModel, SearchHit, SearchProvider
from graph.providers.retry import RetryPolicy, retrying
from graph.state import DroppedSource, ResearchState, Source

if TYPE_CHECKING:
    from graph.guardrails import Guardrails

logger = logging.getLogger(__name__)

RESULTS_PER_QUERY = 3
MAX_SOURCE_CHARS = 4000
CITATION = re.compile(r"\[(\d{1,4})\]")


class Nodes:
    """Binds the node functions to one research model and one search provider.

    Each search call is limited to `call_timeout_s` and retried on 429, 5xx and
    network errors under `search_policy`. With `guardrails`, the question, each new
    search result and the report pass its rails. Without it, nothing is checked.
    """

    def __init__(
        self,
        model: ResearchModel,
        search: SearchProvider,
        search_policy: RetryPolicy,
        call_timeout_s: float,
        guardrails: Guardrails | None = None,
    ) -> None:
        self.model = model
        self.search = search
        self.search_policy = search_policy
        self.call_timeout_s = call_timeout_s
        self.guardrails = guardrails

    async def plan(self, state: ResearchState) -> dict[str, Any]:
        """Draft the plan. Kept apart from `approve` so resuming never re-runs the model."""
        if self.guardrails is not None:
            await self.guardrails.check_question(state["question"])
        plan = await self.model.draft_plan(state["question"])
        return {"plan": plan.model_dump(), "model": self.model.name, "step_index": 0}

    @staticmethod
    def approve(state: ResearchState) -> dict[str, Any]:
        """Pause for a person's decision; this node re-runs from its first line on resume.

        The resume value is `{"approved": bool, "edited_plan": plan | None}`, already
        validated by the service. An edited plan replaces the draft.
        """
        decision = interrupt({"plan": state["plan"]})

        if not decision.get("approved"):
            return {"approved": False}
        edited = decision.get("edited_plan")
        if edited is None:
            return {"approved": True, "plan_edited": False}
        plan = ResearchPlan.model_validate(edited)
        return {"approved": True, "plan_edited": True, "plan": plan.model_dump()}

    async def research(self, state: ResearchState) -> dict[str, Any]:
        """Run the queries of the next plan step and keep the sources not seen before.

        The source rail screens each new result; the ones it flags are returned as
        `dropped_sources` and never become sources.
        """
        plan = ResearchPlan.model_validate(state["plan"])
        index = state.get("step_index", 0)
        step = plan.steps[index]

        results = await asyncio.gather(
            *(self._search(query) for query in step.queries), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures and len(failures) == len(results):
            raise ProviderError(f"Every search of step {index + 1} failed: {failures[0]}")

        known = {source["url"] for source in state.get("sources", [])}
        known.update(dropped["url"] for dropped in state.get("dropped_sources", []))
        new_hits: list[tuple[SearchHit, str]] = []
        for query, hits in zip(step.queries, results, strict=True):
            if isinstance(hits, BaseException):
                continue
            for hit in hits:
                if hit.url in known:
                    continue
                known.add(hit.url)
                new_hits.append((hit, query))

        new_hits, dropped = await self._screen(new_hits)
        next_id = len(state.get("sources", [])) + 1
        gathered = [
            _source(next_id + offset, hit, query) for offset, (hit, query) in enumerate(new_hits)
        ]
        update: dict[str, Any] = {"sources": gathered, "step_index": index + 1}
        if dropped:
            update["dropped_sources"] = dropped
        return update

    async def write(self, state: ResearchState) -> dict[str, Any]:
        """Stream the report; every token goes to the custom stream as it is produced."""
        plan = ResearchPlan.model_validate(state["plan"])
        sources = state.get("sources", [])
        emit = get_stream_writer()

        parts: list[str] = []
        async for token in self.model.write_report(state["question"], plan, sources):
            parts.append(token)
            emit({"token": token})
        report = "".join(parts)

        if self.guardrails is not None:
            ids = [source["id"] for source in sources]
            await self.guardrails.check_report(state["question"], report, ids)
        return {"report": report, "citations": cited_sources(report, sources)}

    async def _screen(
        self, hits: list[tuple[SearchHit, str]]
    ) -> tuple[list[tuple[SearchHit, str]], list[DroppedSource]]:
        """Split (hit, query) pairs into those the source rail keeps and those it drops."""
        if self.guardrails is None or not hits:
            return hits, []
        reasons = await self.guardrails.check_sources(
            [(hit.title, hit.content[:MAX_SOURCE_CHARS]) for hit, _ in hits]
        )
        kept: list[tuple[SearchHit, str]] = []
        dropped: list[DroppedSource] = []
        for (hit, query), reason in zip(hits, reasons, strict=True):
            if reason is None:
                kept.append((hit, query))
            else:
                logger.warning(
                    "source rail dropped a search result: url=%s reason=%s", hit.url, reason
                )
                dropped.append(DroppedSource(url=hit.url, title=hit.title, reason=reason))
        return kept, dropped

    async def _search(self, query: str) -> list[SearchHit]:
        async def attempt() -> list[SearchHit]:
            async with asyncio.timeout(self.call_timeout_s):
                return await self.search.search(query, RESULTS_PER_QUERY)

        try:
            return await retrying(attempt, self.search_policy, f"search {query!r}")
        except Exception as exc:
            logger.warning(
                "search failed: provider=%s query=%r error=%s", self.search.name, query, exc
            )
            raise


def _source(source_id: int, hit: SearchHit, query: str) -> Source:
    return Source(
        id=source_id,
        url=hit.url,
        title=hit.title,
        content=hit.content[:MAX_SOURCE_CHARS],
        query=query,
    )


def cited_sources(report: str, sources: Sequence[Source]) -> list[int]:
    """Return the distinct source ids cited as `[n]`, in order of first citation."""
    valid = {source["id"] for source in sources}
    cited: dict[int, None] = {}
    for match in CITATION.finditer(report):
        number = int(match.group(1))
        if number in valid:
            cited.setdefault(number, None)
    return list(cited)


def after_approval(state: ResearchState) -> str:
    return "research" if state.get("approved") else "__end__"


def after_research(state: ResearchState) -> str:
    steps = state["plan"]["steps"]
    return "research" if state.get("step_index", 0) < len(steps) else "write"
