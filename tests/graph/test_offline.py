"""The offline model: question splitting, extractive reports and exact report lengths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from graph.builder import build_graph
from graph.plan import PlanStep, ResearchPlan
from graph.providers.corpus import LocalCorpus
from graph.providers.offline import OFFLINE_NOTICE, OfflineModel
from graph.state import Source
from tests.conftest import CORPUS_DIR, make_settings, run_scout
from tests.helpers import TERMINAL, approve, submit, wait_for_status
from tests.support import event_data, replay_events

THREE_PART_QUESTION = (
    "How does a sourdough starter leaven bread? "
    "Why did lighthouse keepers wind clockwork; "
    "how do glaciers form moraines?"
)
CITED_SENTENCE = re.compile(r"(.+?) \[(\d+)\](?: |$)")


async def test_offline_plan_splits_questions():
    plan = await OfflineModel().draft_plan(THREE_PART_QUESTION)

    goals = [step.goal for step in plan.steps]
    assert len(plan.steps) == 4
    assert "sourdough starter" in goals[0]
    assert "lighthouse keepers" in goals[1]
    assert "glaciers form moraines" in goals[2]
    assert goals[3].startswith("Identify limits")
    assert "sourdough" in plan.steps[0].queries[0]
    assert "lighthouse" in plan.steps[1].queries[0]
    assert "glaciers" in plan.steps[2].queries[0]


async def test_offline_plan_one_part_question():
    plan = await OfflineModel().draft_plan("How does a Fresnel lens focus light?")

    assert len(plan.steps) == 2
    assert "fresnel lens" in plan.steps[0].queries[0]
    assert plan.steps[1].queries == [
        "fresnel lens focus light limits",
        "fresnel lens focus light failure",
    ]


async def test_offline_plan_keeps_at_most_three_parts():
    question = (
        "How do bakers feed a starter? How does a Fresnel lens work? "
        "Where do moraines form? Why do varroa mites harm bees?"
    )

    plan = await OfflineModel().draft_plan(question)

    assert len(plan.steps) == 4
    assert "varroa" not in " ".join(step.goal for step in plan.steps[:3])


async def run_offline_graph(question: str, index_path: Path) -> dict:
    """Run the real graph with the offline model on the test corpus, approving the draft plan."""
    corpus = LocalCorpus(CORPUS_DIR, index_path)
    await corpus.open()
    try:
        graph = build_graph(OfflineModel(), corpus, InMemorySaver())
        config = {"configurable": {"thread_id": "offline-report"}}
        await graph.ainvoke({"question": question}, config)
        await graph.ainvoke(Command(resume={"approved": True, "edited_plan": None}), config)
        return (await graph.aget_state(config)).values
    finally:
        await corpus.close()


def cited_sentences(report: str) -> list[tuple[str, int]]:
    """Return (sentence, source id) pairs from the step sections, before the source list."""
    body = report.split("## Sources")[0]
    pairs = []
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        pairs += [(match[1], int(match[2])) for match in CITED_SENTENCE.finditer(line)]
    return pairs


async def test_offline_report_is_extractive(tmp_path: Path):
    state = await run_offline_graph(THREE_PART_QUESTION, tmp_path / "corpus.db")

    sources = {source["id"]: " ".join(source["content"].split()) for source in state["sources"]}
    pairs = cited_sentences(state["report"])
    assert pairs
    for sentence, source_id in pairs:
        assert source_id in sources, sentence
        assert sentence in sources[source_id], (sentence, source_id)
    assert {source_id for _, source_id in pairs} <= set(state["citations"])


async def test_offline_report_starts_with_notice():
    plan = ResearchPlan(steps=[PlanStep(goal="Find out about hives.", queries=["hive"])])
    source = Source(
        id=1,
        url="corpus/beekeeping.md#top",
        title="Beekeeping",
        query="hive",
        content="A beekeeper keeps colonies of honeybees in hives to harvest honey.",
    )

    tokens = [
        token async for token in OfflineModel().write_report("Why keep bees?", plan, [source])
    ]

    report = "".join(tokens)
    assert report.startswith("# Why keep bees?")
    assert OFFLINE_NOTICE in report
    assert "honeybees in hives to harvest honey. [1]" in report


@pytest.mark.parametrize("count", [1, 7, 2500])
async def test_offline_report_exact_tokens(count):
    plan = ResearchPlan(steps=[PlanStep(goal="Find out about lenses.", queries=["lens"])])

    tokens = [
        token async for token in OfflineModel(report_tokens=count).write_report("Q?", plan, [])
    ]

    assert len(tokens) == count


async def test_report_tokens_setting_streams_exactly(tmp_path: Path):
    # A report cut to 37 tokens keeps no citation, which the output rail rejects, and this
    # test is about streaming an exact token count, so it runs without the rails.
    settings = make_settings(
        tmp_path / "data", SCOUT_OFFLINE_REPORT_TOKENS="37", SCOUT_GUARDRAILS="off"
    )

    async with run_scout(settings) as scout, scout.client() as client:
        job_id = await submit(client, "How does a Fresnel lens focus light?")
        await wait_for_status(client, job_id, {"awaiting_approval"})
        await approve(client, job_id)
        view = await wait_for_status(client, job_id, TERMINAL)
        events = await replay_events(client, job_id)

    texts = [data["text"] for data in event_data(events, "token")]
    assert view["status"] == "done", view
    assert len(texts) == 37
    assert "".join(texts) == view["report"]
