"""The hosted or self-hosted NVIDIA NIM model, through LangChain's ChatNVIDIA client."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.rate_limiters import InMemoryRateLimiter
from langchain_nvidia_ai_endpoints import ChatNVIDIA
from pydantic import ValidationError

from graph.plan import MAX_STEPS, ResearchPlan
from graph.providers.base import ProviderError
from graph.providers.retry import RetryPolicy, parse_retry_after, retrying
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


def pacer(requests_per_minute: float) -> InMemoryRateLimiter:
    """Return LangChain's token-bucket limiter, allowing no bursts above the steady rate.

    One pacer is shared by every model call of a process, so all jobs together stay
    under the endpoint's requests-per-minute limit.
    """
    return InMemoryRateLimiter(
        requests_per_second=requests_per_minute / 60,
        check_every_n_seconds=min(0.05, 30 / requests_per_minute),
        max_bucket_size=1,
    )


class NvidiaModel:
    """Plans with a JSON reply and writes by streaming; any OpenAI-compatible NIM endpoint works.

    Every call passes the shared pacer, is limited to `call_timeout_s`, and is retried on
    429, 5xx and network errors under `policy`.
    """

    offline = False

    def __init__(
        self,
        chat: ChatNVIDIA,
        policy: RetryPolicy,
        call_timeout_s: float,
        plan_attempts: int = 2,
    ) -> None:
        self.chat = chat
        self.name = chat.model or "nvidia"
        self.policy = policy
        self.call_timeout_s = call_timeout_s
        self.plan_attempts = plan_attempts

    @classmethod
    def from_settings(
        cls,
        api_key: str,
        model: str,
        base_url: str | None,
        timeout_s: float,
        requests_per_minute: float = 40.0,
        policy: RetryPolicy | None = None,
    ) -> NvidiaModel:
        chat = ChatNVIDIA(
            model=model,
            api_key=api_key,
            base_url=base_url,
            temperature=0.2,
            max_completion_tokens=2048,
            timeout=timeout_s,
            rate_limiter=pacer(requests_per_minute),
            # The client sends aggregate usage reports to NVIDIA unless this is False.
            usage_telemetry_enabled=False,
        )
        return cls(chat, policy or RetryPolicy(), timeout_s)

    async def draft_plan(self, question: str) -> ResearchPlan:
        """Ask for a JSON plan; a reply that does not parse is retried once with the error."""
        messages: list[BaseMessage] = [SystemMessage(PLANNER_PROMPT), HumanMessage(question)]
        error = ""
        for _ in range(self.plan_attempts):
            call = functools.partial(self._invoke, list(messages))
            reply = await retrying(call, self.policy, "model call (plan)", self._retry_after)
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

        messages = [SystemMessage(WRITER_PROMPT), HumanMessage(prompt)]
        stream = await retrying(
            lambda: self._open_stream(messages),
            self.policy,
            "model call (write)",
            self._retry_after,
        )
        first, chunks = stream
        if first:
            yield first
        # NOTE: a failure after the first token is not retried, because the text already
        # sent cannot be taken back. The job then ends `partial` with that text.
        while True:
            try:
                async with asyncio.timeout(self.call_timeout_s):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            text = chunk.text if isinstance(chunk.text, str) else ""
            if text:
                yield text

    async def _invoke(self, messages: list[BaseMessage]) -> AIMessage:
        async with asyncio.timeout(self.call_timeout_s):
            reply = await self.chat.ainvoke(messages)
        assert isinstance(reply, AIMessage)
        return reply

    async def _open_stream(self, messages: list[BaseMessage]) -> tuple[str, Any]:
        """Start a stream and read up to its first text, so that errors before it can be retried."""
        chunks = self.chat.astream(messages)
        async with asyncio.timeout(self.call_timeout_s):
            async for chunk in chunks:
                text = chunk.text if isinstance(chunk.text, str) else ""
                if text:
                    return text, chunks
        return "", chunks

    def _retry_after(self, exc: BaseException) -> float | None:
        """Read `Retry-After` from the client's last response, which ChatNVIDIA does not surface.

        NOTE: with concurrent calls the last response may belong to another call. Its wait
        is then an estimate, taken from the same endpoint.
        """
        response = getattr(getattr(self.chat, "_async_client", None), "last_response", None)
        if response is None or getattr(response, "status", None) != 429:
            return None
        return parse_retry_after(response.headers.get("Retry-After"))


def parse_plan(text: str) -> ResearchPlan:
    """Parse a plan from a model reply that may wrap its JSON in prose or a code fence."""
    found = JSON_OBJECT.search(text)
    if not found:
        raise ValueError("no JSON object in the reply")
    try:
        return ResearchPlan.model_validate(json.loads(found.group()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from exc
