"""The two protocols the graph depends on: a research model and a search provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from graph.plan import ResearchPlan
from graph.state import Source


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result: where it came from and the text a report may rely on."""

    url: str
    title: str
    content: str


class ResearchModel(Protocol):
    """Drafts plans and writes reports; `name` appears in job views and report headers."""

    name: str
    offline: bool

    async def draft_plan(self, question: str) -> ResearchPlan: ...

    def write_report(
        self, question: str, plan: ResearchPlan, sources: Sequence[Source]
    ) -> AsyncIterator[str]: ...


class SearchProvider(Protocol):
    """Runs one query and returns at most `max_results` hits, best first."""

    name: str

    async def search(self, query: str, max_results: int) -> list[SearchHit]: ...


class ProviderError(Exception):
    """A model or search call failed in a way the job should report."""
