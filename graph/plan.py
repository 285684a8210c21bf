"""The research plan: the reviewable contract between the planner and the researcher."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STEPS = 12
MAX_QUERIES_PER_STEP = 6
MAX_GOAL_CHARS = 500
MAX_QUERY_CHARS = 300


class PlanStep(BaseModel):
    """One step of a plan: what to find out, and the searches that find it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    goal: str = Field(
        min_length=1, max_length=MAX_GOAL_CHARS, description="What this step establishes."
    )
    queries: list[Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]] = Field(
        min_length=1,
        max_length=MAX_QUERIES_PER_STEP,
        description="Search queries run for this step, in order.",
    )

    @field_validator("queries")
    @classmethod
    def _queries_are_nonblank(cls, queries: list[str]) -> list[str]:
        cleaned = [query.strip() for query in queries]
        for query in cleaned:
            if not query:
                raise ValueError("a query must not be blank")
            if len(query) > MAX_QUERY_CHARS:
                raise ValueError(f"a query must be at most {MAX_QUERY_CHARS} characters")
        return cleaned


class ResearchPlan(BaseModel):
    """An ordered list of steps that a person approves or edits before research starts."""

    model_config = ConfigDict(extra="forbid")

    steps: list[PlanStep] = Field(
        min_length=1, max_length=MAX_STEPS, description="Steps run in order."
    )

    def queries(self) -> list[str]:
        """Return every query of every step, in plan order."""
        return [query for step in self.steps for query in step.queries]
