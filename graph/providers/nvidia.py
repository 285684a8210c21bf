"""The hosted or self-hosted NVIDIA NIM model, through LangChain's ChatNVIDIA client."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Sequence

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_nvidia_ai_endpoints import ChatNVIDIA
from pydantic import ValidationError

from graph.plan import MAX_STEPS, ResearchPlan
from graph.providers.base import ProviderError
from graph.state import Source

logger = logging.getLogger(__name__)

PLANNER_PROMPT = f"""You are the planner of a research agent. Break the user's question into
at most {MAX_STEPS} ordered research steps (three to five is typical). Each step has a "goal"
(one sentence: what the step establishes) and "queries" (one to three web search queries).
Reply with one JSON object and nothing else, in this form:
{{"steps": [{{"goal": "...", "queries": ["...", "..."]}}]}}"""

WRITER_PROMPT = """You are the writer of a research agent. Write a concise report in Markdown
that answers the question using only the numbered sources below. After every claim, cite its
source as [n], where n is the source's number. Cite no number that is not listed. If the
sources do not answer part of the question, say so plainly."""

JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
SOURCE_CHARS_FOR_WRITER = 1500


class NvidiaModel:
    """Plans with a JSON reply and writes by streaming; any OpenAI-compatible NIM endpoint works."""

    offline = False

    def __init__(self, chat: ChatNVIDIA, plan_attempts: int = 2) -> None:
        self.chat = chat
        self.name = chat.model or "nvidia"
        self.plan_attempts = plan_attempts

    @classmethod
    def from_settings(
        cls, api_key: str, model: str, base_url: str | None, timeout_s: float
    ) -> NvidiaModel:
        chat = ChatNVIDIA(
            model=model,
            api_key=api_key,
            base_url=base_url,
            temperature=0.2,
            max_completion_tokens=2048,
            timeout=timeout_s,
            # The client reports aggregate usage to NVIDIA unless told not to.
            usage_telemetry_enabled=False,
        )
        return cls(chat)

    async def draft_plan(self, question: str) -> ResearchPlan:
        """Ask for a JSON plan; a reply that does not parse is retried once with the error."""
        messages: list[BaseMessage] = [SystemMessage(PLANNER_PROMPT), HumanMessage(question)]
        error = ""
        for _ in range(self.plan_attempts):
            reply = await self.chat.ainvoke(messages)
            text = reply.text if isinstance(reply.text, str) else str(reply.content)
            try:
                return parse_plan(text)
            except ValueError as exc:
                error = str(exc)
                logger.warning("model returned an unusable plan: %s", error)
                messages += [reply, HumanMessage(f"That reply was not a valid plan: {error}")]
        raise ProviderError(f"The model did not return a valid plan: {error}")

    async def write_report(
        self, question: str, plan: ResearchPlan, sources: Sequence[Source]
    ) -> AsyncIterator[str]:
        """Stream the report's text as the model produces it."""
        listing = "\n\n".join(
            f"[{s['id']}] {s['title']} ({s['url']})\n{s['content'][:SOURCE_CHARS_FOR_WRITER]}"
            for s in sources
        )
        steps = "\n".join(f"- {step.goal}" for step in plan.steps)
        prompt = f"Question: {question}\n\nPlan:\n{steps}\n\nSources:\n{listing or '(none)'}"

        async for chunk in self.chat.astream([SystemMessage(WRITER_PROMPT), HumanMessage(prompt)]):
            text = chunk.text if isinstance(chunk.text, str) else ""
            if text:
                yield text


def parse_plan(text: str) -> ResearchPlan:
    """Parse a plan from a model reply that may wrap its JSON in prose or a code fence."""
    found = JSON_OBJECT.search(text)
    if not found:
        raise ValueError("no JSON object in the reply")
    try:
        return ResearchPlan.model_validate(json.loads(found.group()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from exc
