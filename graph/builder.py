"""Assembles the research graph: plan -> approve -> research (per step) -> write."""

from __future__ import annotations

from typing import TYPE_CHECKING

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graph.nodes import Nodes, after_approval, after_research
from graph.providers.base import ResearchModel, SearchProvider
from graph.providers.retry import RetryPolicy
from graph.state import ResearchState

if TYPE_CHECKING:
    from graph.guardrails import Guardrails


def build_graph(
    model: ResearchModel,
    search: SearchProvider,
    checkpointer: BaseCheckpointSaver | None,
    search_policy: RetryPolicy | None = None,
    call_timeout_s: float = 120.0,
    guardrails: Guardrails | None = None,
) -> CompiledStateGraph:
    """Compile the graph; one compiled graph serves every job of a process.

    With `guardrails`, the question, every search result and the report pass its rails.
    """
    nodes = Nodes(
        model, search, search_policy or RetryPolicy(max_tries=3), call_timeout_s, guardrails
    )
    builder = StateGraph(ResearchState)
    builder.add_node("plan", nodes.plan)
    builder.add_node("approve", nodes.approve)
    builder.add_node("research", nodes.research)
    builder.add_node("write", nodes.write)

    builder.add_edge(START, "plan")
    builder.add_edge("plan", "approve")
    builder.add_conditional_edges("approve", after_approval, ["research", END])
    builder.add_conditional_edges("research", after_research, ["research", "write"])
    builder.add_edge("write", END)
    return builder.compile(checkpointer=checkpointer)
