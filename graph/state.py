"""The graph's state: what each node reads and writes on a job's thread."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


class Source(TypedDict):
    """A document the researcher gathered; `id` is the number a citation `[n]` uses."""

    id: int
    url: str
    title: str
    content: str
    query: str


class DroppedSource(TypedDict):
    """A search result that the source rail kept from the writer, and why."""

    url: str
    title: str
    reason: str


class ResearchState(TypedDict, total=False):
    """State of one research run. Plans are stored as plain dicts so checkpoints stay JSON-like."""

    question: str
    plan: dict[str, Any]
    plan_edited: bool
    approved: bool
    step_index: int
    sources: Annotated[list[Source], operator.add]
    dropped_sources: Annotated[list[DroppedSource], operator.add]
    report: str
    citations: list[int]
    model: str
