"""Scout's guardrails: NeMo Guardrails self-check rails, run with the job's own model.

Three rails guard a job:
- the input rail screens the question before planning, and a rejected question fails the job;
- the source rail screens every new search result before the writer can read it, and a
  flagged result is dropped and recorded with its reason;
- the output rail checks the finished report: its `[n]` citations in code first, then the
  model's self check. A rejected report never ends `done`.

Each rail is one `LLMRails` built from one self-check flow of `config/` and called only
through `LLMRails.generate_async`, with that rail alone enabled. The rails fail closed: a
model error, a timeout, or a reply that is neither "Yes" nor "No" raises
GuardrailUnavailable, which stops the job instead of letting unchecked text through.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from graph.guardrails.citations import citation_problem
from graph.providers.retry import RetryPolicy, retrying

# NeMo Guardrails sends anonymous usage statistics to NVIDIA unless this variable turns them
# off. It must be set before nemoguardrails is imported, and a value the operator set is kept.
os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "config"
MAX_CONCURRENT_SOURCE_CHECKS = 4
MAX_REASON_CHARS = 200
FIRST_WORD = re.compile(r"\W*(\w+)")


@dataclass(frozen=True, slots=True)
class Rail:
    """One rail: the self-check flow it runs and whether it checks the bot message."""

    key: str
    label: str
    flow: str
    output: bool
    default_reason: str


QUESTION_RAIL = Rail(
    "question",
    "input rail",
    "self check input",
    output=False,
    default_reason="the model judged it unsafe or not a research question",
)
SOURCE_RAIL = Rail(
    "source",
    "source rail",
    "self check input $variant=check_source",
    output=False,
    default_reason="the model judged that it tries to instruct the agent",
)
REPORT_RAIL = Rail(
    "report",
    "output rail",
    "self check output",
    output=True,
    default_reason="the model judged that it fails the report checks",
)
RAILS = (QUESTION_RAIL, SOURCE_RAIL, REPORT_RAIL)


VERDICT_CACHE_SIZE = 20_000


class GuardrailError(Exception):
    """A rail stopped the job; the message is shown as the job's error."""


class QuestionRejected(GuardrailError):
    """The input rail rejected the question."""


class ReportRejected(GuardrailError):
    """The output rail rejected the report."""


class GuardrailUnavailable(GuardrailError):
    """A rail could not reach a verdict, so the job stops rather than run unchecked."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rail's decision on one text; `reason` is set when the text is blocked."""

    allowed: bool
    reason: str | None = None


class Guardrails:
    """Builds the rails once, on first use, and runs them with one LangChain chat model.

    `policy`, `call_timeout_s` and `retry_after` apply to each rail call as they do to the
    research model's own calls, so a rail call that hits a 429 or a 5xx is retried.
    """

    def __init__(
        self,
        chat_model: BaseChatModel,
        config_dir: Path = CONFIG_DIR,
        policy: RetryPolicy | None = None,
        call_timeout_s: float = 120.0,
        retry_after: Callable[[BaseException], float | None] | None = None,
    ) -> None:
        if not (config_dir / "config.yml").is_file():
            raise FileNotFoundError(
                f"The guardrails config {config_dir / 'config.yml'} is missing."
            )
        self.chat_model = chat_model
        self.config_dir = config_dir
        self.policy = policy or RetryPolicy(max_tries=1)
        self.call_timeout_s = call_timeout_s
        self.retry_after = retry_after
        self._rails: dict[str, Any] | None = None
        self._build_lock = threading.Lock()
        self._verdicts: OrderedDict[tuple[str, bytes], Verdict] = OrderedDict()

    async def warm_up(self) -> None:
        """Build the rails now, so that the first job does not wait for the import."""
        await self._built()

    async def check_question(self, question: str) -> None:
        """Raise QuestionRejected when the input rail blocks the question."""
        verdict = await self.verdict(QUESTION_RAIL, question)
        if not verdict.allowed:
            logger.info("input rail rejected a question: reason=%s", verdict.reason)
            raise QuestionRejected(
                f"The question was rejected by the input rail: {verdict.reason}."
            )

    async def check_sources(self, sources: Sequence[tuple[str, str]]) -> list[str | None]:
        """Screen (title, text) pairs; return the reason to drop each one, or None to keep it."""
        limit = asyncio.Semaphore(MAX_CONCURRENT_SOURCE_CHECKS)

        async def check(title: str, text: str) -> str | None:
            async with limit:
                verdict = await self.verdict(SOURCE_RAIL, f"Title: {title}\n\n{text}")
            return None if verdict.allowed else verdict.reason

        tasks = [asyncio.create_task(check(title, text)) for title, text in sources]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One failed check fails the step, so the other checks need not finish.
            for task in tasks:
                task.cancel()
            raise

    async def check_report(self, question: str, report: str, source_ids: Collection[int]) -> None:
        """Raise ReportRejected when a citation is wrong or the output rail blocks the report."""
        problem = citation_problem(report, source_ids)
        if problem is None:
            numbers = ", ".join(str(number) for number in sorted(source_ids)) or "none"
            request = f"Gathered source numbers: {numbers}\nQuestion: {question}"
            verdict = await self.verdict(REPORT_RAIL, report, request=request)
            problem = verdict.reason
        if problem is not None:
            logger.info("output rail rejected a report: reason=%s", problem)
            raise ReportRejected(f"The report was rejected by the output rail: {problem}.")

    async def verdict(self, rail: Rail, text: str, request: str = "") -> Verdict:
        """Run one rail on `text` through LLMRails.generate_async and read its decision.

        For the output rail, `text` is the report and `request` the user message that the
        prompt shows beside it. A rail missing from the config allows everything.
        """
        # A verdict depends only on the rail, its model and the text, so text that several
        # jobs gather (the same page, the same corpus section) is checked once per process.
        key = (rail.key, hashlib.sha256(f"{request}\0{text}".encode()).digest())
        cached = self._verdicts.get(key)
        if cached is not None:
            self._verdicts.move_to_end(key)
            return cached

        verdict = await self._run_rail(rail, text, request)
        self._verdicts[key] = verdict
        if len(self._verdicts) > VERDICT_CACHE_SIZE:
            self._verdicts.popitem(last=False)
        return verdict

    async def _run_rail(self, rail: Rail, text: str, request: str) -> Verdict:
        rails = await self._built()
        llm_rails = rails.get(rail.key)
        if llm_rails is None:
            return Verdict(allowed=True)

        if rail.output:
            messages = [
                {"role": "user", "content": request},
                {"role": "assistant", "content": text},
            ]
        else:
            messages = [{"role": "user", "content": text}]
        options = {
            "rails": {
                "input": not rail.output,
                "output": rail.output,
                "dialog": False,
                "retrieval": False,
                "tool_input": False,
                "tool_output": False,
            },
            "log": {"activated_rails": True, "llm_calls": True},
        }

        async def attempt() -> Any:
            from nemoguardrails.exceptions import LLMCallException

            try:
                async with asyncio.timeout(self.call_timeout_s):
                    # An empty state keeps LLMRails from caching every conversation in memory.
                    return await llm_rails.generate_async(
                        messages=messages, options=options, state={}
                    )
            except LLMCallException as exc:
                # Retry on the model client's own error, which `retrying` can classify.
                if isinstance(exc.__cause__, Exception):
                    raise exc.__cause__ from None
                raise

        try:
            response = await retrying(attempt, self.policy, f"{rail.label} call", self.retry_after)
        except Exception as exc:
            logger.warning("%s failed: %s", rail.label, exc)
            raise GuardrailUnavailable(_unavailable(rail, f"the model call failed: {exc}")) from exc
        return _read_verdict(rail, response, text)

    async def _built(self) -> dict[str, Any]:
        if self._rails is None:
            # Importing nemoguardrails takes seconds, so it runs off the event loop.
            await asyncio.to_thread(self._build)
        assert self._rails is not None
        return self._rails

    def _build(self) -> None:
        with self._build_lock:
            if self._rails is not None:
                return
            try:
                self._rails = build_rails(self.config_dir, self.chat_model)
            except Exception as exc:
                logger.exception("guardrails could not be built from %s", self.config_dir)
                raise GuardrailUnavailable(
                    f"The guardrails could not be built from {self.config_dir}: {exc}"
                ) from exc


def build_rails(config_dir: Path, chat_model: BaseChatModel) -> dict[str, Any]:
    """Build one LLMRails per rail listed in `config_dir`, each running only its own flow."""
    # NeMo Guardrails logs every prompt at INFO, with whole source texts and reports. Only
    # its warnings and errors are kept, unless the operator set a level for its logger.
    library_logger = logging.getLogger("nemoguardrails")
    if library_logger.level == logging.NOTSET:
        library_logger.setLevel(logging.WARNING)

    # Imported here: nemoguardrails costs about 2 s and 60 MiB to import.
    from nemoguardrails import RailsConfig
    from nemoguardrails.integrations.langchain.llm_adapter import LangChainLLMAdapter
    from nemoguardrails.rails.llm.llmrails import LLMRails

    built: dict[str, Any] = {}
    for rail in RAILS:
        # LLMRails adds flows to the config it gets, so every rail loads its own copy.
        config = RailsConfig.from_path(str(config_dir))
        listed = config.rails.output.flows if rail.output else config.rails.input.flows
        if rail.flow not in listed:
            logger.warning(
                "guardrails: the %s is off (%r is not in its config)", rail.label, rail.flow
            )
            continue
        config.rails.input.flows = [] if rail.output else [rail.flow]
        config.rails.output.flows = [rail.flow] if rail.output else []
        built[rail.key] = LLMRails(config, llm=LangChainLLMAdapter(chat_model))
    logger.info("guardrails built: rails=%s model=%s", ",".join(built), type(chat_model).__name__)
    return built


def _read_verdict(rail: Rail, response: Any, text: str) -> Verdict:
    """Turn a GenerationResponse into a verdict; anything unexpected is a rail failure.

    An allowed text comes back unchanged, and the model's reply starts with "No". A
    blocked text stops its rail, and the reply starts with "Yes". Any other combination,
    such as the generic apology NeMo Guardrails returns after an internal error, raises
    GuardrailUnavailable.
    """
    log = response.log
    replies = [call.completion or "" for call in (log.llm_calls if log else [])]
    if not replies:
        raise GuardrailUnavailable(_unavailable(rail, "the rail made no model call"))
    reply = replies[-1].strip()
    found = FIRST_WORD.match(reply)
    answer = found.group(1).lower() if found else ""
    stopped = any(activated.stop for activated in log.activated_rails)
    messages = response.response if isinstance(response.response, list) else []
    returned = messages[-1].get("content") if messages else None

    if answer == "no" and not stopped and returned == text:
        return Verdict(allowed=True)
    if answer == "yes" and stopped:
        return Verdict(allowed=False, reason=_reason(reply) or rail.default_reason)
    raise GuardrailUnavailable(
        _unavailable(rail, f"the model's reply {reply[:120]!r} is neither Yes nor No")
    )


def _reason(reply: str) -> str:
    """Return the reason after the leading "Yes" of a reply, on one line and short."""
    first_line = reply.splitlines()[0] if reply else ""
    reason = re.sub(r"^\W*yes\b[\s:,.;-]*", "", first_line, flags=re.IGNORECASE).strip()
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1].rstrip() + "…"
    return reason.rstrip(".")


def _unavailable(rail: Rail, detail: str) -> str:
    return (
        f"The {rail.label} is unavailable, so the job was stopped (the guardrails fail "
        f"closed): {detail.rstrip('.')}. Check the model, or set SCOUT_GUARDRAILS=off to run "
        "without them."
    )
