"""The offline research model: plans and writes with no network and no weights.

It plans by splitting the question into sub-questions and writes an extractive
report: sentences taken verbatim from the gathered sources, each followed by the
citation of the source it came from.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

from graph.plan import MAX_GOAL_CHARS, MAX_QUERY_CHARS, PlanStep, ResearchPlan
from graph.providers.text import keywords, sentences, tokens
from graph.state import Source

OFFLINE_NOTICE = (
    "Written by Scout's offline provider: an extractive summary of the gathered sources, "
    "not the output of a language model."
)
SENTENCES_PER_STEP = 3
CLAUSE_SPLIT = re.compile(
    r"\?\s+|;\s*(?:and\s+)?(?:also\s+)?|\s+and also\s+|,\s+and\s+", re.IGNORECASE
)


class OfflineModel:
    """A deterministic stand-in for a language model, selected when no model key is set."""

    name = "offline"
    offline = True

    def __init__(self, report_tokens: int | None = None, token_delay_s: float = 0.0) -> None:
        # report_tokens pads or cuts the report to an exact token count (for benchmarks).
        self.report_tokens = report_tokens
        self.token_delay_s = token_delay_s

    async def draft_plan(self, question: str) -> ResearchPlan:
        """Turn each sub-question into a step, then add a step on limits and failure cases."""
        clauses = [c.strip(" ?.!") for c in CLAUSE_SPLIT.split(question) if len(keywords(c)) >= 2]
        if not clauses:
            clauses = [question.strip(" ?.!") or question.strip()]
        topic = " ".join(keywords(question)[:4]) or _clip(question.strip(), 60)

        steps = [
            PlanStep(
                goal=_clip(f"Find out: {clause}?", MAX_GOAL_CHARS), queries=_queries_for(clause)
            )
            for clause in clauses[:3]
        ]
        steps.append(
            PlanStep(
                goal=_clip(
                    f"Identify limits, failure cases and trade-offs of {topic}.", MAX_GOAL_CHARS
                ),
                queries=[
                    _clip(f"{topic} limits", MAX_QUERY_CHARS),
                    _clip(f"{topic} failure", MAX_QUERY_CHARS),
                ],
            )
        )
        return ResearchPlan(steps=steps)

    async def write_report(
        self, question: str, plan: ResearchPlan, sources: Sequence[Source]
    ) -> AsyncIterator[str]:
        """Stream the extractive report token by token."""
        text = compose_report(question, plan, sources)
        report_tokens = tokens(text)
        if self.report_tokens is not None:
            report_tokens = _fit(report_tokens, self.report_tokens)

        for token in report_tokens:
            yield token
            # Yield to the event loop so subscribers and storage run while the report is written.
            await asyncio.sleep(self.token_delay_s)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _queries_for(clause: str) -> list[str]:
    words = keywords(clause)
    if not words:
        # A question of only stop words or symbols is searched as written.
        return [_clip(clause.strip(), MAX_QUERY_CHARS) or "?"]
    queries = [_clip(" ".join(words[:6]), MAX_QUERY_CHARS)]
    if len(words) > 3:
        queries.append(" ".join(words[:3]))
    return queries


def _fit(report_tokens: list[str], count: int) -> list[str]:
    if not report_tokens:
        report_tokens = ["(no text) "]
    repeats = -(-count // len(report_tokens))
    return (report_tokens * repeats)[:count]


def compose_report(question: str, plan: ResearchPlan, sources: Sequence[Source]) -> str:
    """Build the report text: a notice, one section per step, then the numbered sources."""
    parts = [f"# {question.strip()}\n\n_{OFFLINE_NOTICE}_\n\n"]
    used: set[str] = set()

    for step in plan.steps:
        step_sources = [s for s in sources if s["query"] in step.queries] or list(sources)
        picked = _best_sentences(step, question, step_sources, used)
        parts.append(f"## {step.goal}\n\n")
        if picked:
            parts.append(" ".join(f"{sentence} [{source_id}]" for sentence, source_id in picked))
        else:
            parts.append("The gathered sources say nothing about this step.")
        parts.append("\n\n")

    if sources:
        parts.append("## Sources\n\n")
        # A numbered list rather than `[n]`, so the list itself does not count as citations.
        parts.extend(f"{s['id']}. {s['title']} ({s['url']})\n" for s in sources)
    else:
        parts.append("No sources were found, so nothing above is supported by a citation.\n")
    return "".join(parts)


def _stem(word: str) -> str:
    """Strip a common English suffix, so "moves", "moving" and "move" compare equal."""
    for suffix in ("ing", "es", "ed", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _best_sentences(
    step: PlanStep, question: str, step_sources: Sequence[Source], used: set[str]
) -> list[tuple[str, int]]:
    step_words = {_stem(word) for word in keywords(" ".join([step.goal, question, *step.queries]))}
    scored: list[tuple[int, int, str, int]] = []
    for rank, source in enumerate(step_sources):
        for sentence in sentences(source["content"]):
            if sentence in used or len(sentence) < 30:
                continue
            overlap = len(step_words.intersection(_stem(word) for word in keywords(sentence)))
            # The search ranked these sources for the step's queries, so a sentence with no
            # shared word still qualifies, after every sentence that shares one.
            scored.append((-overlap, rank, sentence, source["id"]))

    scored.sort(key=lambda item: (item[0], item[1]))
    picked = [(sentence, source_id) for _, _, sentence, source_id in scored[:SENTENCES_PER_STEP]]
    used.update(sentence for sentence, _ in picked)
    return picked
